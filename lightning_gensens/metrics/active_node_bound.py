"""torchmetrics state of the active-node Gaussian bound (Daróczy et al., Theorem 3.2, eq. 6)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_gensens.functional.active_node_bound import (
    _active_node_bound_update,
    active_node_moments,
    log_psi_star,
)


class ActiveNodeBound(Metric):
    """log ψ*(k, μ, σ) of the active-unit count c(x): exact integer states (n, Σc, Σc²), summed across ranks.

    Args:
        num_layers: k, the number of weight layers (the moment order k − 1 is the number of hidden layers).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    count: Tensor
    total: Tensor
    total_sq: Tensor

    def __init__(self, num_layers: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_layers < 1:
            raise ValueError(f"num_layers must be positive, got {num_layers}.")
        self.num_layers = num_layers
        for state in ("count", "total", "total_sq"):
            self.add_state(state, torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, preactivations: Sequence[Tensor]) -> None:
        """Feed the hidden ReLU pre-activations of one batch (one tensor per nn.ReLU, forward order)."""
        count, total, total_sq = _active_node_bound_update(preactivations)
        self.count += count.to(self.count)
        self.total += total.to(self.total)
        self.total_sq += total_sq.to(self.total_sq)

    def compute(self) -> dict[str, Tensor]:
        """``log_psi`` = log ψ*(k, μ, σ) (eq. 6), and the moments ``mu``, ``sigma`` of c(x)."""
        mu, sigma = active_node_moments(self.count, self.total, self.total_sq)
        return {"log_psi": log_psi_star(self.num_layers, mu, sigma).to(self.count.device), "mu": mu, "sigma": sigma}
