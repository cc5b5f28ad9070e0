"""The trivial baseline: predicted test loss and error = the training probe's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics.aggregation import SumMetric

from lightning_gensens.capture import Captured
from lightning_gensens.measures.base import Estimate, Measure, Reference, Settings


class Trivial(Measure[SumMetric]):
    """Predicts that the test loss and error equal the probe's (l_te ≈ l_tr, e_te ≈ e_tr): the yardstick of every
    estimator's skill, 1 − MAE/MAE(trivial). Any output (regression too). Logs ``train``/``val``, the number of
    samples of each split."""

    name = "trivial"
    relative_cost = 1.0

    def make_metric(self, net: nn.Module, settings: Settings) -> SumMetric:
        metric = SumMetric(nan_strategy="disable")
        metric.set_dtype(torch.float64)
        return metric

    def update(self, metric: SumMetric, record: Captured, net: nn.Module) -> None:
        metric.update(float(record.logits.shape[0]))

    def values(self, computed: Mapping[str, Any]) -> dict[str, Tensor]:
        return dict(computed)

    def estimate(self, computed: Mapping[str, Any], reference: Reference) -> dict[str, Estimate]:
        return {self.name: Estimate(reference.loss, reference.error)}
