"""torchmetrics state of the weight-perturbation disagreement curves of a split."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from lightning_gensens.functional.perturbation import SIGMAS, _check_sigmas, _perturbation_update


class PerturbationDisagreement(Metric):
    """Per scale σ of ``sigmas``, the disagreement rate D(σ) of ``draws`` Gaussian perturbations of the weights with
    the network's predictions and the network's cross-entropy C(σ) against them
    (:func:`~lightning_gensens.functional.perturbation_curves`), summed over batches and DDP ranks.

    The perturbed networks are drawn from ``seed`` alone, so every batch, split and rank meets the same ones;
    ``update(net, x, logits)`` restores the weights bit for bit and keeps no reference to ``net``.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    sums: Tensor
    samples: Tensor

    def __init__(self, sigmas: Sequence[float] = SIGMAS, draws: int = 8, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if draws < 1:
            raise ValueError(f"draws must be at least 1, got {draws}.")
        self.sigmas, self.draws, self.seed = tuple(float(s) for s in _check_sigmas(sigmas)), draws, seed
        self.add_state("sums", torch.zeros(2, len(self.sigmas), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("samples", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, net: nn.Module, x: Tensor, logits: Tensor) -> None:
        """Score the batch ``x`` whose logits f_θ(x) are ``logits`` [B, K]."""
        if logits.dim() != 2 or logits.shape[1] < 2:
            raise ValueError(f"logits must be [B, K] with K ≥ 2 classes, got {tuple(logits.shape)}.")
        sums = _perturbation_update(net, x, logits, self.sigmas, self.draws, self.seed)
        self.sums += sums.to(self.sums.device)
        self.samples += logits.shape[0]

    def compute(self) -> dict[str, Tensor]:
        """``disagreement`` D(σ) and ``cross_entropy`` C(σ) [S], and the number of ``samples``."""
        if float(self.samples) == 0:
            raise ValueError("PerturbationDisagreement was computed before any update: the split had no batch.")
        rates = self.sums / (self.samples * self.draws)
        return {"disagreement": rates[0], "cross_entropy": rates[1], "samples": self.samples}
