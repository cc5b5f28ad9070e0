"""The trivial baseline: predicted test loss and error = the training probe's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from lightning_gensens.capture import Captured
from lightning_gensens.measures.base import Estimate, Measure, Reference, Settings
from lightning_gensens.metrics._mean import SampleCount


class Trivial(Measure[SampleCount]):
    """Predicts that the test loss and error equal the probe's (l_te ≈ l_tr, e_te ≈ e_tr): the yardstick of every
    estimator's skill, 1 − MAE/MAE(trivial). Any output (regression too). Logs ``train``/``val``, the number of
    samples of each split."""

    name = "trivial"
    relative_cost = 1.0

    def make_metric(self, net: nn.Module, settings: Settings) -> SampleCount:
        return SampleCount()

    def update(self, metric: SampleCount, record: Captured, net: nn.Module) -> None:
        metric.update(record.logits.shape[0])

    def values(self, computed: Mapping[str, Any]) -> dict[str, Tensor]:
        return dict(computed)

    def estimate(self, computed: Mapping[str, Any], reference: Reference) -> dict[str, Estimate]:
        return {self.name: Estimate(reference.loss, reference.error)}
