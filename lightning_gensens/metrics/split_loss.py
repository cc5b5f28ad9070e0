"""torchmetrics state of a split's mean loss and error rate (the actual test loss and the probe's train loss)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_gensens.functional.input_gradient_norm import LossFn


class SplitLoss(Metric):
    """Mean of a mean-reduced ``loss_fn(logits, y)`` over samples, and the error rate of class logits ``[B, K]``
    with integer labels (NaN for other outputs), summed across batches and DDP ranks."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    loss_sum: Tensor
    count: Tensor
    errors: Tensor
    classified: Tensor

    def __init__(self, loss_fn: LossFn, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.loss_fn = loss_fn
        for state in ("loss_sum", "count", "errors", "classified"):
            self.add_state(state, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, logits: Tensor, y: Tensor) -> None:
        n = logits.shape[0]
        # in place: assigning a Metric's attribute goes through ``nn.Module.__setattr__`` (microseconds per state)
        self.loss_sum.add_(self.loss_fn(logits.float(), y).double() * n)
        self.count.add_(n)
        if logits.ndim == 2 and logits.shape[1] >= 2 and not y.is_floating_point():
            self.errors.add_((logits.argmax(dim=1) != y).sum())
            self.classified.add_(n)

    def compute(self) -> dict[str, Tensor]:
        if float(self.count) == 0:
            raise ValueError("SplitLoss was computed before any update: the split had no labelled batch.")
        nan = torch.full_like(self.count, math.nan)
        return {
            "loss": self.loss_sum / self.count,
            "error": self.errors / self.classified if self.classified > 0 else nan,
        }
