"""torchmetrics state of the spectral-norm product (follow-up paper, l⁶)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_gensens.functional.spectral_norm import log_spectral_norm_product
from lightning_gensens.metrics._mean import SampleMean


class SpectralNorm(SampleMean):
    """log ∏‖W_i‖_σ of the weights it is updated with (averaged over updates, hence over DDP ranks).

    ``update(model)`` reads the weights once; the metric keeps no reference to the model.
    """

    def update(self, model: nn.Module, example_input: Tensor | None = None) -> None:
        self._accumulate(torch.ones((), dtype=torch.float64), log_spectral_norm_product(model, example_input))

    def compute(self) -> Tensor:
        return self._mean()
