"""Output sensitivity S before the softmax (Forouzesh et al., eq. 2) with the label-free (eq. 9) and ratio
estimators."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from lightning_gensens import estimators
from lightning_gensens.capture import Captured
from lightning_gensens.measures.base import Estimate, Measure, Reference, Settings
from lightning_gensens.metrics.output_sensitivity import OutputSensitivity as OutputSensitivityMetric


class OutputSensitivity(Measure[OutputSensitivityMetric]):
    """S on the training probe and on validation; reuses the captured logits, so costs one noisy forward.

    Estimators: ``output_sensitivity`` (S_te/S_tr·l_tr) and, for K ≥ 2 outputs, ``output_sensitivity_label_free``
    (eq. 9, which needs neither labels nor the training loss). Any differentiable network.

    Args:
        sigma: standard deviation σ_ε of the input noise (the paper's 0.1).
        n_draws: noise draws per sample.
        **kwargs: ``seed`` and ``loss_fn`` of :class:`~lightning_gensens.measures.Measure`.
    """

    name = "output_sensitivity"
    relative_cost = 8.0

    def __init__(self, sigma: float = 0.1, n_draws: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        OutputSensitivityMetric(sigma, n_draws)  # validates the arguments
        self.sigma, self.n_draws = sigma, n_draws

    def make_metric(self, net: nn.Module, settings: Settings) -> OutputSensitivityMetric:
        return OutputSensitivityMetric(self.sigma, self.n_draws, seed=settings.seed)

    def update(self, metric: OutputSensitivityMetric, record: Captured, net: nn.Module) -> None:
        metric.update(net, record.x, record.logits)

    def values(self, computed: Mapping[str, Any]) -> dict[str, Tensor]:
        return {split: value["s"] for split, value in computed.items()}

    def ratio_values(self, computed: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        return computed["val"]["s"], computed["train"]["s"]

    def estimate(self, computed: Mapping[str, Any], reference: Reference) -> dict[str, Estimate]:
        out = super().estimate(computed, reference)
        if reference.num_outputs >= 2:  # eq. 9 is a statement about K-class logits
            val = computed["val"]
            label_free = estimators.output_sensitivity_label_free(
                val["s"], val["input_second_moment"], self.sigma, reference.num_outputs
            )
            out["output_sensitivity_label_free"] = Estimate(label_free)
        return out
