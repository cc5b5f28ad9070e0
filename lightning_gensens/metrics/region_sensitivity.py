"""torchmetrics state of the empirical activation-region tangent sensitivity Ŝ (Daróczy et al., eq. 3, 4, 7)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_gensens.functional.region_sensitivity import (
    _region_patterns,
    _region_sensitivity_compute,
    _region_sensitivity_soft_compute,
    _region_sensitivity_update,
)

MODES = ("hard", "soft")


class RegionSensitivity(Metric):
    """Ŝ(X) from captured ReLU pre-activations, and the number of distinct activation patterns seen.

    ``hard`` keeps sums and every sample's activation pattern (one byte per unit); ``soft`` also keeps every
    sample's pre-activations (float32) and T(A(x)) to weigh the patterns of eq. 4. Pass another split's
    :meth:`patterns` as ``reference`` to :meth:`soft` so both splits are weighed over one set A+ (eq. 7).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    count: Tensor
    tangent_sum: Tensor
    pattern_list: list[Tensor]
    tangent: list[Tensor]
    pre: list[Tensor]  # soft mode only

    def __init__(self, mode: str = "hard", temperature: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        self.mode, self.temperature = mode, temperature
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tangent_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("pattern_list", [], dist_reduce_fx="cat")
        self.add_state("tangent", [], dist_reduce_fx="cat")
        if mode == "soft":
            self.add_state("pre", [], dist_reduce_fx="cat")

    def update(self, model: nn.Module, preactivations: Sequence[Tensor], tangent: Tensor | None = None) -> None:
        """Feed captured pre-activations; ``tangent`` = T(A(x)) when already computed from the same masks.

        ``model`` is used for this batch only; the metric keeps no reference to it.
        """
        pre, tangent = _region_sensitivity_update(model, preactivations, tangent)
        self.count += tangent.numel()
        self.tangent_sum += tangent.sum().to(self.tangent_sum)
        self.pattern_list.append((pre > 0).to(torch.uint8))  # deduplicated at compute: no per-batch host sync
        self.tangent.append(tangent)
        if self.mode == "soft":
            self.pre.append(pre.float())

    def patterns(self) -> tuple[Tensor, Tensor]:
        """The split's distinct activation patterns (bool [P, N]) and their T(A) [P]."""
        return _region_patterns(dim_zero_cat(self.pattern_list).bool(), dim_zero_cat(self.tangent))

    def soft(self, reference: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Soft Ŝ over A+ = this split's patterns ∪ ``reference``'s (eq. 4, 7)."""
        if self.mode != "soft":
            raise ValueError("soft() needs RegionSensitivity(mode='soft').")
        ref_patterns, ref_tangent = reference if reference is not None else (None, None)
        return _region_sensitivity_soft_compute(
            dim_zero_cat(self.pre), dim_zero_cat(self.tangent), ref_patterns, ref_tangent, self.temperature
        )

    def compute(self) -> dict[str, Tensor]:
        """``hard`` Ŝ, ``soft`` Ŝ over this split's own patterns (soft mode), and ``patterns`` (distinct count)."""
        out = {
            "hard": _region_sensitivity_compute(self.tangent_sum, self.count),
            "patterns": torch.tensor(float(self.patterns()[0].shape[0]), device=self.count.device),
        }
        if self.mode == "soft":
            out["soft"] = self.soft()
        return out
