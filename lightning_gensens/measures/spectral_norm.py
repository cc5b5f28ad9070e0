"""The spectral-norm product ∏‖W_i‖_σ with its time-ratio estimator (the follow-up paper's l⁶)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from lightning_gensens import estimators
from lightning_gensens.capture import Captured
from lightning_gensens.measures.base import WEIGHTS, Estimate, Reference, Settings, TimeRatioMeasure
from lightning_gensens.metrics.spectral_norm import SpectralNorm as SpectralNormMetric


class SpectralNorm(TimeRatioMeasure[SpectralNormMetric]):
    """∏‖W_i‖_σ (conv layers by their operator norm at the captured input size); logs its logarithm as
    ``spectral_norm/train`` and ``spectral_norm/val`` (equal: it depends on the weights only) and predicts
    ∏‖W^{(t−1)}‖_σ/∏‖W^{(t)}‖_σ·l_tr from the second run on."""

    name = "spectral_norm"
    relative_cost = 20.0

    def make_metric(self, net: nn.Module, settings: Settings) -> SpectralNormMetric:
        return SpectralNormMetric()

    def update(self, metric: SpectralNormMetric, record: Captured, net: nn.Module) -> None:
        metric.update(net, record.x)

    def values(self, computed: Mapping[str, Any]) -> dict[str, Tensor]:
        return {"train": computed[WEIGHTS], "val": computed[WEIGHTS]}

    def estimate(self, computed: Mapping[str, Any], reference: Reference) -> dict[str, Estimate]:
        current = computed[WEIGHTS]
        previous = self.previous.advance({"log_prod": current})
        if previous is None:
            return {}
        log_prod = (previous["log_prod"], current)
        return {
            self.name: Estimate(
                estimators.spectral_norm(*log_prod, reference.loss),
                estimators.spectral_norm(*log_prod, reference.error),
            )
        }
