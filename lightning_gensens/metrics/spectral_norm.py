"""torchmetrics state of the spectral-norm product (follow-up paper, l⁶)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from lightning_gensens.functional.spectral_norm import log_spectral_norm_product


class SpectralNorm(Metric):
    """log ∏‖W_i‖_σ of the weights it is updated with (averaged over updates, hence over DDP ranks)."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("log_prod", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("updates", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, model: nn.Module, example_input: Tensor | None = None) -> None:
        self.log_prod += log_spectral_norm_product(model, example_input).to(self.log_prod.device)
        self.updates += 1

    def compute(self) -> Tensor:
        return self.log_prod / self.updates
