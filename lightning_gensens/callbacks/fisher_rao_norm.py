"""Callback of the label-summed Fisher–Rao norm with the ratio estimator (follow-up paper, eq. 10, l⁵)."""

from __future__ import annotations

from torch import nn

from lightning_gensens.callbacks.base import MeasureCallback, register_measure
from lightning_gensens.capture import Captured
from lightning_gensens.metrics.fisher_rao_norm import FisherRaoNorm as FisherRaoNormMetric


@register_measure
class FisherRaoNorm(MeasureCallback):
    """Fisher–Rao norm from the captured logits (no extra forward); predicts m(X_te)/m(X_tr)·l_tr."""

    name = "fisher_rao_norm"

    def make_metric(self) -> FisherRaoNormMetric:
        return FisherRaoNormMetric()

    def update(self, metric: FisherRaoNormMetric, record: Captured, net: nn.Module) -> None:
        metric.update(record.logits)
