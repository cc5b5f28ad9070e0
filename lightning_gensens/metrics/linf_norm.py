"""torchmetrics state of the layer-wise l∞ norm bound (Daróczy et al., eq. 1)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from lightning_gensens.functional.linf_norm import _linf_norm_update


class LinfNorm(Metric):
    """log ∏w_i and log Sens¹ of the weights it is updated with (averaged over updates, hence over DDP ranks).

    ``update(model, input_dim)`` reads the weights once; the metric keeps no reference to the model.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    log_prod: Tensor
    log_bound: Tensor
    updates: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("log_prod", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("log_bound", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("updates", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, model: nn.Module, input_dim: int) -> None:
        log_prod, log_bound = _linf_norm_update(model, input_dim)
        self.log_prod += log_prod.to(self.log_prod.device)
        self.log_bound += log_bound.to(self.log_bound.device)
        self.updates += 1

    def compute(self) -> dict[str, Tensor]:
        """``log_prod`` = mean over updates of log ∏w_i, ``log_bound`` = mean of log Sens¹ (eq. 1)."""
        if float(self.updates) == 0:
            raise ValueError("LinfNorm was computed before any update.")
        return {"log_prod": self.log_prod / self.updates, "log_bound": self.log_bound / self.updates}
