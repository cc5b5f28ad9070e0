"""Callback of the spectral-norm product with its time-ratio estimator (follow-up paper, l⁶)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from lightning_gensens import estimators
from lightning_gensens.callbacks.base import Estimate, MeasureCallback, TimeRatioMixin, register_measure
from lightning_gensens.capture import Captured
from lightning_gensens.metrics.spectral_norm import SpectralNorm as SpectralNormMetric


@register_measure
class SpectralNorm(TimeRatioMixin, MeasureCallback):
    """∏‖W_i‖_σ (conv layers by their operator norm at the captured input size); logs its logarithm as
    ``spectral_norm/train`` and ``spectral_norm/val`` (equal: it depends on the weights only)."""

    name = "spectral_norm"
    weight_only = True

    def make_metric(self) -> SpectralNormMetric:
        return SpectralNormMetric()

    def update_weights(self, metric: SpectralNormMetric, net: nn.Module, example: Captured) -> None:
        metric.update(net, example.x)

    def values(self, computed: dict[str, Any]) -> dict[str, Tensor]:
        return {"train": computed["value"], "val": computed["value"]}

    def estimate(self, computed: dict[str, Any], train: dict[str, Tensor]) -> dict[str, Estimate]:
        previous = self._advance({"log_prod": computed["value"]})
        if previous is None:
            return {}
        log_prev, log_cur = previous["log_prod"], computed["value"]
        return {
            "spectral_norm": Estimate(
                estimators.spectral_norm(log_prev, log_cur, train["loss"]),
                estimators.spectral_norm(log_prev, log_cur, train["error"]),
            )
        }
