"""torchmetrics state of the input-gradient norm E_x‖∂ₓℓ‖_q (Simon-Gabriel et al., Lemma 2)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat
from torchmetrics.utilities.distributed import gather_all_tensors

from lightning_gensens.functional.input_gradient_norm import (
    LossFn,
    _input_gradient_norm_compute,
    _input_gradient_norm_update,
)
from lightning_gensens.metrics._samples import keep_first, rows

_LOCAL_STATES = ("kept_x", "kept_y")
"""States of kept samples: merged by ``forward``/``merge_state``, never gathered across ranks, never cast."""


class InputGradientNorm(Metric):
    """E_x‖∂ₓℓ(x, y)‖_q for each q in ``q``, one backward pass per batch (eval mode: samples do not interact).

    :meth:`compute` returns ``{"q1": E‖∂ₓℓ‖₁, "q2": E‖∂ₓℓ‖₂}`` for the default ``q``: one key ``f"q{q:g}"`` per
    exponent, in the order given. ``update(model, x, y)`` uses ``model`` for that batch only (no reference kept).

    Args:
        q: the norms' exponents (q = 1 is dual to ℓ∞ attacks, q = 2 to ℓ2 attacks), distinct, each ≥ 1.
        loss_fn: mean-reduced ``loss_fn(logits, y)``; cross-entropy by default.
        keep: also keep the first ``keep`` samples seen on this rank (:meth:`kept`), e.g. to attack them.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    norm_sum: Tensor
    count: Tensor
    kept_x: list[Tensor]
    kept_y: list[Tensor]

    def __init__(
        self, q: Sequence[float] = (1, 2), loss_fn: LossFn | None = None, keep: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.q = tuple(float(v) for v in q)
        if not self.q or any(not v >= 1 for v in self.q):
            raise ValueError(f"q must be one or more exponents ≥ 1, got {q}.")
        self._names = tuple(f"q{v:g}" for v in self.q)
        if len(set(self._names)) != len(self.q):
            raise ValueError(f"q must hold distinct exponents, got {q}.")
        if keep < 0:
            raise ValueError(f"keep must be non-negative, got {keep}.")
        self.loss_fn, self.keep = loss_fn, keep
        self.add_state("norm_sum", torch.zeros(len(self.q), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("kept_x", [], dist_reduce_fx="cat")
        self.add_state("kept_y", [], dist_reduce_fx="cat")

    def update(self, model: nn.Module, x: Tensor, y: Tensor) -> None:
        norm_sum, count = _input_gradient_norm_update(model, x, y, self.q, self.loss_fn)
        self.norm_sum += norm_sum.to(self.norm_sum)
        self.count += count.to(self.count)
        room = self.keep - rows(self.kept_x)
        if room > 0:
            self.kept_x.append(x[:room].detach().clone())
            self.kept_y.append(y[:room].detach().clone())

    def _reduce_states(self, incoming_state: dict[str, Any]) -> None:
        """Merge as torchmetrics does (``forward``, ``merge_state``), then keep only the first ``keep`` samples."""
        super()._reduce_states(incoming_state)
        self.kept_x = keep_first(self.kept_x, self.keep)
        self.kept_y = keep_first(self.kept_y, self.keep)

    def _apply(self, fn: Callable[[Tensor], Tensor], exclude_state: Sequence[str] = ()) -> nn.Module:
        """``.to()``/``set_dtype`` leave the kept samples as they were given (labels stay integers)."""
        return super()._apply(fn, exclude_state=(*exclude_state, *_LOCAL_STATES))

    def _sync_dist(self, dist_sync_fn: Callable[..., Any] = gather_all_tensors, process_group: Any = None) -> None:
        """Gather the norm statistics only: the kept samples stay on their rank (and keep their dtypes)."""
        reductions = self._reductions
        self._reductions = {k: v for k, v in reductions.items() if k not in _LOCAL_STATES}
        try:
            super()._sync_dist(dist_sync_fn, process_group)
        finally:
            self._reductions = reductions

    def kept(self) -> tuple[Tensor, Tensor]:
        """The samples kept on this rank (not gathered across ranks)."""
        return dim_zero_cat(self.kept_x), dim_zero_cat(self.kept_y)

    def compute(self) -> dict[str, Tensor]:
        """``{f"q{q:g}": E_x‖∂ₓℓ‖_q}`` for every exponent, in the order of ``q``."""
        if float(self.count) == 0:
            raise ValueError("InputGradientNorm was computed before any update: the split was empty.")
        means = _input_gradient_norm_compute(self.norm_sum, self.count)
        return {name: means[i] for i, name in enumerate(self._names)}
