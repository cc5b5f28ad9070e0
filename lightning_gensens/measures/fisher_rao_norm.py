"""The label-summed Fisher–Rao norm with the ratio estimator (the follow-up paper, eq. 10, l⁵)."""

from __future__ import annotations

from torch import nn

from lightning_gensens.capture import Captured
from lightning_gensens.measures.base import Measure, Requirement, Settings
from lightning_gensens.metrics.fisher_rao_norm import FisherRaoNorm as FisherRaoNormMetric


class FisherRaoNorm(Measure[FisherRaoNormMetric]):
    """Σ_j E_x[⟨∂L(f, j)/∂f, f⟩²] from the captured logits (no extra forward); predicts m(X_te)/m(X_tr)·l_tr.
    Classification logits only."""

    name = "fisher_rao_norm"
    relative_cost = 2.0  # cheap, but not needed fresh at every run: planned by the budget, not a rider
    requires = Requirement.CLASS_LOGITS

    def make_metric(self, net: nn.Module, settings: Settings) -> FisherRaoNormMetric:
        return FisherRaoNormMetric()

    def update(self, metric: FisherRaoNormMetric, record: Captured, net: nn.Module) -> None:
        metric.update(record.logits)
