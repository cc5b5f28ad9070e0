"""The papers' reference architectures, used by the demo, the examples and the tests."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def mlp(
    in_features: int, num_classes: int = 10, hidden: Sequence[int] = (100, 100, 100, 100), bias: bool = True
) -> nn.Sequential:
    """Fully connected ReLU network; the default is the papers' 4 hidden layers of 100 units."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h, bias=bias), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes, bias=bias))
    return nn.Sequential(*layers)


def small_cnn(
    in_channels: int = 1,
    side: int = 8,
    num_classes: int = 10,
    width: int = 16,
    batch_norm: bool = True,
    dropout: float = 0.0,
) -> nn.Sequential:
    """Two 3x3 conv blocks (optionally with BatchNorm), a max-pool, and a flatten + dense head."""

    def block(c_in: int, c_out: int) -> list[nn.Module]:
        conv: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1)]
        return conv + ([nn.BatchNorm2d(c_out)] if batch_norm else []) + [nn.ReLU()]

    pooled = side // 2
    head: list[nn.Module] = [nn.Flatten()] + ([nn.Dropout(dropout)] if dropout > 0 else [])
    return nn.Sequential(
        *block(in_channels, width),
        *block(width, width),
        nn.MaxPool2d(2),
        *head,
        nn.Linear(width * pooled * pooled, num_classes),
    )


class ResidualNet(nn.Module):
    """A ResNet-style network: one ``nn.ReLU(inplace=True)`` module applied three times, BatchNorm, a skip."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.conv1, self.bn1 = nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(width * 16, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.stem(x))
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)) + x)
        return self.head(F.max_pool2d(out, 2).flatten(1))


class Classifier(L.LightningModule):
    """Cross-entropy classifier around ``net``; SGD as in the papers (lr 0.05, weight decay 5e-4) or Adam."""

    def __init__(self, net: nn.Module, lr: float = 0.05, weight_decay: float = 5e-4, optimizer: str = "sgd") -> None:
        super().__init__()
        if optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}.")
        self.net, self.lr, self.weight_decay, self.optimizer = net, lr, weight_decay, optimizer

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val/loss", F.cross_entropy(logits, y))
        self.log("val/acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
