"""torchmetrics state of the input-gradient norm E_x‖∂ₓℓ‖_q (Simon-Gabriel et al., Lemma 2)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_gensens.functional.input_gradient_norm import (
    LossFn,
    _input_gradient_norm_compute,
    _input_gradient_norm_update,
)


class InputGradientNorm(Metric):
    """E_x‖∂ₓℓ(x, y)‖_q for each q in ``q``, one backward pass per batch (eval mode: samples do not interact).

    Args:
        q: the norms' exponents (q = 1 is dual to ℓ∞ attacks, q = 2 to ℓ2 attacks).
        loss_fn: mean-reduced ``loss_fn(logits, y)``; cross-entropy by default.
        keep: also keep up to this many of the samples seen on this rank (``kept()``), e.g. to attack them.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(
        self, q: Sequence[float] = (1, 2), loss_fn: LossFn | None = None, keep: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.q = tuple(float(v) for v in q)
        if not self.q or any(v < 1 for v in self.q):
            raise ValueError(f"q must be one or more exponents ≥ 1, got {q}.")
        self.loss_fn, self.keep = loss_fn, keep
        self.add_state("norm_sum", torch.zeros(len(self.q), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self._kept: list[tuple[Tensor, Tensor]] = []

    def update(self, model: nn.Module, x: Tensor, y: Tensor) -> None:
        norm_sum, count = _input_gradient_norm_update(model, x, y, self.q, self.loss_fn)
        self.norm_sum += norm_sum.to(self.norm_sum)
        self.count += count.to(self.count)
        room = self.keep - sum(kx.shape[0] for kx, _ in self._kept)
        if room > 0:
            self._kept.append((x[:room].detach().clone(), y[:room].detach().clone()))

    def kept(self) -> tuple[Tensor, Tensor]:
        """The samples kept on this rank (not gathered across ranks)."""
        return dim_zero_cat([kx for kx, _ in self._kept]), dim_zero_cat([ky for _, ky in self._kept])

    def compute(self) -> dict[float, Tensor]:
        if float(self.count) == 0:
            raise ValueError("InputGradientNorm was computed before any update: the split was empty.")
        means = _input_gradient_norm_compute(self.norm_sum, self.count)
        return {q: means[i] for i, q in enumerate(self.q)}

    def reset(self) -> None:
        super().reset()
        self._kept = []
