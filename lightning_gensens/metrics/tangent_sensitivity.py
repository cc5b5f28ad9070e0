"""torchmetrics state of the tangent sample sensitivity E_x T(x) (Daróczy et al., Definition 3.1)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from lightning_gensens.functional.tangent_sensitivity import (
    supports_closed_form,
    tangent_sample_sensitivity,
    tangent_sensitivity_from_masks,
    tangent_sensitivity_hutchinson,
)
from lightning_gensens.metrics._random import device_generator

METHODS = ("auto", "exact", "hutchinson")


class TangentSensitivity(Metric):
    """E_x T(x), exact for ReLU MLPs (from captured activation masks when given, Lemma 3.3), otherwise an unbiased
    Hutchinson estimate whose standard error is accumulated beside it (``stderr`` in :meth:`compute`).

    Args:
        method: ``"auto"`` (exact where the closed form applies), ``"exact"`` or ``"hutchinson"``.
        n_probes: Hutchinson probes per sample (at least 2, for a standard error).
        seed: seed of the private probe generator (one per device, created on first use with an offset per DDP
            rank, never re-seeded by ``reset``: ``forward`` and ``update`` draw the same probes).

    ``update(model, x, ...)`` uses ``model`` for that batch only; the metric keeps no reference to it.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    count: Tensor
    total: Tensor
    variance: Tensor

    def __init__(self, method: str = "auto", n_probes: int = 2, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
        if n_probes < 2:
            raise ValueError(f"n_probes must be at least 2 (for a standard error), got {n_probes}.")
        self.method, self.n_probes, self.seed = method, n_probes, seed
        self._generators: dict[torch.device, torch.Generator] = {}
        for state in ("count", "total", "variance"):
            self.add_state(state, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(
        self, model: nn.Module, x: Tensor, preactivations: Sequence[Tensor] | None = None, tangent: Tensor | None = None
    ) -> None:
        """Feed one batch; ``preactivations`` (captured, one per nn.ReLU) spare the exact path a forward pass,
        and ``tangent`` = T(x) already computed from them spares the closed form too."""
        exact = self.method == "exact" or (self.method == "auto" and supports_closed_form(model))
        if exact and tangent is not None:
            values = tangent
        elif exact and preactivations is not None:
            values = tangent_sensitivity_from_masks(model, [h > 0 for h in preactivations])
        elif exact:
            values = tangent_sample_sensitivity(model, x, method="exact")
        else:
            generator = device_generator(self._generators, self.seed, x.device)
            values, stderr = tangent_sensitivity_hutchinson(model, x, self.n_probes, generator)
            self.variance += stderr.double().square().sum().to(self.variance)
        self.count += values.numel()
        self.total += values.double().sum().to(self.total)

    def compute(self) -> dict[str, Tensor]:
        """``mean`` = E_x T(x) and ``stderr``, its Hutchinson standard error (0 on the exact path)."""
        if float(self.count) == 0:
            raise ValueError("tangent_sensitivity has no samples: the split was empty.")
        return {"mean": self.total / self.count, "stderr": self.variance.sqrt() / self.count}
