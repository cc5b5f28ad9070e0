"""Relative flatness κ_Σ (Petzka et al., Table 1) with the ratio estimator of the follow-up paper."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from lightning_gensens.capture import Captured
from lightning_gensens.measures.base import Measure, Requirement, Settings
from lightning_gensens.metrics.relative_flatness import RelativeFlatness as RelativeFlatnessMetric
from lightning_gensens.utilities import weight_layers

PER_LAYER = (
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


ALL_LAYERS_UP_TO = 6
"""Networks with at most this many weight layers are measured on all of them by default."""


class RelativeFlatness(Measure[RelativeFlatnessMetric]):
    """κ_Σ of the chosen layers on the probe and on validation (Hessian of each split's mean loss, computed at
    the end of the run by Lanczos and exact/Hutch++ traces on cached Hessian-vector products); predicts
    κ_Σ(X_te)/κ_Σ(X_tr)·l_tr. Any differentiable network, evaluated in eval mode; needs labels.

    Logs ``relative_flatness/{train,val}`` (κ_Σ), ``…/{train,val}_kappa_max``, and with ``per_layer=True``
    ``…/{split}/{layer}/{stat}`` for each stat of :data:`PER_LAYER`: every estimate beside its error and
    iteration count (ten keys per layer and split, off by default: logging a key costs time too).

    Args:
        layers: Linear/Conv layer names of the measured module. By default all of them in a network of at most
            :data:`ALL_LAYERS_UP_TO` weight layers (the papers' MLPs); in a larger one only the last, whose input is
            the feature representation φ(x) — the layer Petzka et al. measure, and the one whose Hessian stays cheap.
        max_samples: samples per split and rank kept for the Hessian; by default 2,048, or 256 in a network of more
            than :data:`ALL_LAYERS_UP_TO` weight layers.
        lanczos_tol, lanczos_max_iter, trace_budget, trace_rtol: tolerances and probe budgets of the estimators.
            The trace is exact for ReLU Linear layers; elsewhere Hutch++ stops at ``trace_rtol`` relative standard
            error or after ``trace_budget`` Hessian-vector products (30 → about 5%). κ_Σ, the estimator, needs
            only λ_max.
        per_layer: also log every layer's statistics.
        **kwargs: ``seed`` and ``loss_fn`` of :class:`~lightning_gensens.measures.Measure`.
    """

    name = "relative_flatness"
    relative_cost = 60.0  # per layer measured
    requires = Requirement.LABELS

    def __init__(
        self,
        layers: list[str] | None = None,
        max_samples: int | None = None,
        lanczos_tol: float = 1e-3,
        lanczos_max_iter: int = 100,
        trace_budget: int = 30,
        trace_rtol: float = 0.05,
        per_layer: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (max_samples is not None and max_samples < 1) or trace_budget < 6 or not lanczos_tol > 0:
            raise ValueError("max_samples must be positive, trace_budget at least 6 and lanczos_tol positive.")
        self.layers, self.max_samples, self.per_layer = layers, max_samples, per_layer
        self.options = dict(
            lanczos_tol=lanczos_tol, lanczos_max_iter=lanczos_max_iter, trace_budget=trace_budget, trace_rtol=trace_rtol
        )

    def check(self, net: nn.Module) -> str | None:
        available = [name for name, _ in weight_layers(net)]
        unknown = [name for name in self.layers or () if name not in available]
        if unknown:
            return (
                f"{self.name}: {unknown} are not Linear/Conv layers of {type(net).__name__}; choose from {available}."
            )
        return None

    def relative_cost_for(self, net: nn.Module) -> float:
        """The class's guess per layer measured: the curvature of each layer is computed on its own."""
        names = [name for name, _ in weight_layers(net)]
        return self.relative_cost * len(self.layers or (names if len(names) <= ALL_LAYERS_UP_TO else names[-1:]))

    def make_metric(self, net: nn.Module, settings: Settings) -> RelativeFlatnessMetric:
        names = [name for name, _ in weight_layers(net)]
        small = len(names) <= ALL_LAYERS_UP_TO
        layers = self.layers or (None if small else names[-1:])
        max_samples = self.max_samples or (2048 if small else 256)
        return RelativeFlatnessMetric(layers, settings.loss_fn, max_samples, settings.seed, self.options)

    def update(self, metric: RelativeFlatnessMetric, record: Captured, net: nn.Module) -> None:
        assert record.y is not None
        metric.update(net, record.x, record.y)

    def values(self, computed: Mapping[str, Any]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for split, result in computed.items():
            out[split] = result["kappa_sum"]
            out[f"{split}_kappa_max"] = result["kappa_max"]
            if self.per_layer:
                stats = {f"{split}/{k}": v for k, v in result.items() if k.rpartition("/")[2] in PER_LAYER}
                out.update(stats)
        return out

    def ratio_values(self, computed: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        return computed["val"]["kappa_sum"], computed["train"]["kappa_sum"]
