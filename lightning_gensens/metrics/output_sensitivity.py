"""torchmetrics state of the output sensitivity S (Forouzesh et al., eq. 2)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from lightning_gensens.functional.output_sensitivity import (
    _chan_merge,
    _output_sensitivity_compute,
    _output_sensitivity_update,
)
from lightning_gensens.metrics._random import device_generator


class OutputSensitivity(Metric):
    """S = Var_{x,ε}(ε̄) accumulated as streaming (n, mean, M2) in float64, merged exactly across DDP ranks.

    Noise comes from a private generator per device, created on first use and seeded once with ``seed`` plus an
    offset per DDP rank (7919·rank); the global RNG is never touched. ``reset`` does not re-seed it, so
    accumulating through ``forward`` draws the same noise as through ``update``, and each epoch draws fresh noise
    (a new metric with the same seed reproduces a run). ``update(model, x)`` keeps no reference to ``model``.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    moments: Tensor
    input_moment: Tensor

    def __init__(self, sigma: float = 0.1, n_draws: int = 1, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma}.")
        if n_draws < 1:
            raise ValueError(f"n_draws must be at least 1, got {n_draws}.")
        self.sigma, self.n_draws, self.seed = sigma, n_draws, seed
        self._generators: dict[torch.device, torch.Generator] = {}
        self.add_state("moments", torch.zeros(3, dtype=torch.float64), dist_reduce_fx=_chan_merge)
        self.add_state("input_moment", torch.zeros(2, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, model: nn.Module, x: Tensor, logits: Tensor | None = None) -> None:
        generator = device_generator(self._generators, self.seed, x.device)
        moments, input_moment = _output_sensitivity_update(model, x, logits, self.sigma, self.n_draws, generator)
        self.moments = _chan_merge(torch.stack([self.moments, moments.to(self.moments.device)]))
        self.input_moment += input_moment.to(self.input_moment.device)

    def compute(self) -> dict[str, Tensor]:
        """``s`` = S (eq. 2) and ``input_second_moment`` = E[x²] over every input element."""
        return {
            "s": _output_sensitivity_compute(self.moments),
            "input_second_moment": self.input_moment[0] / self.input_moment[1],
        }
