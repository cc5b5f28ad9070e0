"""A LightningModule that holds a RelativeFlatness metric (its own module, so Lightning loads only where used)."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

from lightning_gensens.metrics import RelativeFlatness


class FlatnessModule(L.LightningModule):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.flatness = RelativeFlatness(seed=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
