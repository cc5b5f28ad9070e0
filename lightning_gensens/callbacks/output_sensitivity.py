"""Callback of the output sensitivity S (Forouzesh eq. 2) with the label-free (eq. 9) and ratio estimators."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from lightning_gensens import estimators
from lightning_gensens.callbacks.base import Estimate, MeasureCallback, register_measure
from lightning_gensens.capture import Captured
from lightning_gensens.metrics.output_sensitivity import OutputSensitivity as OutputSensitivityMetric


@register_measure
class OutputSensitivity(MeasureCallback):
    """S on the training probe and on validation; reuses the validation logits, so costs one noisy forward.

    Estimators: ``output_sensitivity`` (S_te/S_tr · l_tr) and ``output_sensitivity_label_free`` (eq. 9, which
    needs neither labels nor the training loss). Any differentiable network.

    Args:
        sigma: standard deviation σ_ε of the input noise (the paper's 0.1).
        n_draws: noise draws per sample.
    """

    name = "output_sensitivity"

    def __init__(self, sigma: float = 0.1, n_draws: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        OutputSensitivityMetric(sigma, n_draws)  # validates the arguments
        self.sigma, self.n_draws = sigma, n_draws
        self._num_classes = 0

    def make_metric(self) -> OutputSensitivityMetric:
        return OutputSensitivityMetric(self.sigma, self.n_draws, seed=self.seed)

    def update(self, metric: OutputSensitivityMetric, record: Captured, net: nn.Module) -> None:
        self._num_classes = record.logits[0].numel()
        metric.update(net, record.x, record.logits)

    def values(self, computed: dict[str, Any]) -> dict[str, Tensor]:
        return {split: value["s"] for split, value in computed.items()}

    def estimate(self, computed: dict[str, Any], train: dict[str, Tensor]) -> dict[str, Estimate]:
        s_tr, s_te = computed["train"]["s"], computed["val"]["s"]
        label_free = estimators.output_sensitivity_label_free(
            s_te, computed["val"]["input_second_moment"], self.sigma, self._num_classes
        )
        return {
            "output_sensitivity": Estimate(
                estimators.ratio(s_te, s_tr, train["loss"]), estimators.ratio(s_te, s_tr, train["error"])
            ),
            "output_sensitivity_label_free": Estimate(label_free),
        }
