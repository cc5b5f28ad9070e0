"""torchmetrics state of the label-summed Fisher–Rao norm (follow-up paper, eq. 10, l⁵)."""

from __future__ import annotations

from torch import Tensor

from lightning_gensens.functional.fisher_rao_norm import _fisher_rao_norm_compute, _fisher_rao_norm_update
from lightning_gensens.metrics._mean import SampleMean


class FisherRaoNorm(SampleMean):
    """Σ_j E_x[⟨∂L(f, j)/∂f, f⟩²] from the logits it is updated with (no extra forward pass)."""

    def update(self, logits: Tensor) -> None:
        self._accumulate(*_fisher_rao_norm_update(logits))

    def compute(self) -> Tensor:
        return _fisher_rao_norm_compute(self.count, self.total)
