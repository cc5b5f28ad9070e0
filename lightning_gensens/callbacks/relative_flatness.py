"""Callback of relative flatness κ_Σ with the ratio estimator (Petzka et al., Table 1; follow-up paper)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from lightning_gensens.callbacks.base import Estimate, MeasureCallback, register_measure
from lightning_gensens.capture import Captured
from lightning_gensens.metrics.relative_flatness import RelativeFlatness as RelativeFlatnessMetric
from lightning_gensens.utilities import weight_layers

_PER_LAYER = (
    "kappa",
    "kappa_tau",
    "lambda_max",
    "lambda_max_error",
    "trace",
    "trace_stderr",
    "rho_max",
    "rho_sum",
    "lanczos_iters",
    "trace_hvps",
)


@register_measure
class RelativeFlatness(MeasureCallback):
    """κ_Σ of the chosen layers on the probe and on validation (Hessian of each split's mean loss, computed at
    epoch end by Lanczos and exact/Hutch++ traces on cached Hessian-vector products); predicts
    κ_Σ(X_te)/κ_Σ(X_tr)·l_tr. Any differentiable network, evaluated in eval mode.

    Logs ``relative_flatness/{train,val}`` (κ_Σ), ``…/{train,val}_kappa_max``, and per layer
    ``…/{split}/{layer}/{kappa, kappa_tau, lambda_max, lambda_max_error, trace, trace_stderr, rho_max, rho_sum,
    lanczos_iters, trace_hvps}``: every estimate beside its error and iteration count.

    Args:
        layers: Linear/Conv layer names of the measured module (default: all).
        max_samples: validation samples per rank kept for the Hessian (the probe is used whole).
        lanczos_tol, lanczos_max_iter, trace_budget, trace_rtol: tolerances and probe budgets of the estimators.
            The trace is exact for ReLU Linear layers; elsewhere Hutch++ stops at ``trace_rtol`` relative standard
            error or after ``trace_budget`` Hessian-vector products (30 → about 5%, every epoch; the functional
            default, 99 at 1%, costs 3-5× more on conv layers). κ_Σ, the estimator, needs only λ_max.
    """

    name = "relative_flatness"
    needs_labels = True

    def __init__(
        self,
        layers: list[str] | None = None,
        max_samples: int = 2048,
        lanczos_tol: float = 1e-3,
        lanczos_max_iter: int = 100,
        trace_budget: int = 30,
        trace_rtol: float = 0.05,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.layers, self.max_samples = layers, max_samples
        self.options = dict(
            lanczos_tol=lanczos_tol, lanczos_max_iter=lanczos_max_iter, trace_budget=trace_budget, trace_rtol=trace_rtol
        )
        if max_samples < 1 or trace_budget < 6 or not lanczos_tol > 0:
            raise ValueError("max_samples must be positive, trace_budget at least 6 and lanczos_tol positive.")

    def check_model(self, net: nn.Module) -> None:
        available = [name for name, _ in weight_layers(net)]
        unknown = [name for name in self.layers or () if name not in available]
        if unknown:
            raise ValueError(
                f"{self.name}: {unknown} are not Linear/Conv layers of {type(net).__name__}; choose from {available}."
            )

    def make_metric(self) -> RelativeFlatnessMetric:
        return RelativeFlatnessMetric(self.layers, self.loss_fn, self.max_samples, self.seed, self.options)

    def update(self, metric: RelativeFlatnessMetric, record: Captured, net: nn.Module) -> None:
        metric.update(net, record.x, record.y)

    def values(self, computed: dict[str, Any]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for split, result in computed.items():
            out[split] = result["kappa_sum"]
            out[f"{split}_kappa_max"] = result["kappa_max"]
            for layer, stats in result.items():
                if isinstance(stats, dict):
                    out.update({f"{split}/{layer}/{key}": stats[key] for key in _PER_LAYER})
        return out

    def estimate(self, computed: dict[str, Any], train: dict[str, Tensor]) -> dict[str, Estimate]:
        return super().estimate({split: result["kappa_sum"] for split, result in computed.items()}, train)
