"""torchmetrics state of the label-free confidence baselines AC, DoC (Guillory et al. 2021), ATC (Garg et al. 2022)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat
from torchmetrics.utilities.distributed import gather_all_tensors

from lightning_gensens.functional.confidence import _check_score_kind, _confidence_compute, _confidence_update

_SCORE_STATES = {"max_softmax": "max_softmax_scores", "negative_entropy": "negative_entropy_scores"}


class ConfidenceStatistics(Metric):
    """Mean max-softmax confidence, mean predictive entropy and the per-sample ATC scores of one split, from logits.

    ``compute()`` returns ``mean_confidence``, ``mean_entropy`` and ``count`` (float64 sums, every sample counted);
    feed two splits' values to ``_average_confidence_compute`` / ``_difference_of_confidences_compute`` and their
    :meth:`scores` to ``_average_thresholded_confidence_compute`` (``lightning_gensens.functional.confidence``).

    The ATC scores (max-softmax and negative entropy, float64) are kept per sample, but only the first
    ``max_samples`` of each rank (``None``: no cap; 0: none kept, ATC unavailable), which bounds the memory to
    16 bytes · ``max_samples`` per rank; ATC on a capped split fits/evaluates on that subset. Non-finite logits are
    not checked per batch (no host sync); ``compute()`` and the ATC functions refuse them.
    """

    is_differentiable = False
    higher_is_better: bool | None = None
    full_state_update = False

    count: Tensor
    confidence_sum: Tensor
    entropy_sum: Tensor
    max_softmax_scores: list[Tensor]
    negative_entropy_scores: list[Tensor]

    def __init__(self, max_samples: int | None = 100_000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, int)):
            raise ValueError(f"max_samples must be an int or None, got {max_samples!r}.")
        if max_samples is not None and max_samples < 0:
            raise ValueError(f"max_samples must be non-negative or None, got {max_samples}.")
        self.max_samples = max_samples
        for state in ("count", "confidence_sum", "entropy_sum"):
            self.add_state(state, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        for state in _SCORE_STATES.values():
            self.add_state(state, [], dist_reduce_fx="cat")

    def update(self, logits: Tensor, scores: tuple[Tensor, Tensor] | None = None) -> None:
        """Add a batch of logits [B, K] (K ≥ 2), e.g. the ones the forward pass already produced; ``scores``: their
        per-sample max-softmax confidence and entropy where already computed (``_confidence_update``), so that
        several metrics of the same logits share that work."""
        confidence, entropy = _confidence_update(logits) if scores is None else scores
        # in place: assigning a Metric's attribute goes through ``nn.Module.__setattr__`` (microseconds per state)
        self.count.add_(confidence.numel())
        self.confidence_sum.add_(confidence.sum().to(self.confidence_sum))
        self.entropy_sum.add_(entropy.sum().to(self.entropy_sum))
        room = confidence.numel() if self.max_samples is None else self.max_samples - self._stored()
        if room > 0:
            self.max_softmax_scores.append(confidence[:room])
            self.negative_entropy_scores.append(-entropy[:room])

    def compute(self) -> dict[str, Tensor]:
        """``mean_confidence``, ``mean_entropy`` and ``count`` of the split (synced over ranks)."""
        return _confidence_compute(self.count, self.confidence_sum, self.entropy_sum)

    def scores(self, kind: str = "max_softmax") -> Tensor:
        """The kept per-sample ATC scores, ``kind`` = "max_softmax" or "negative_entropy", float64 [N].

        Gathered from every rank in rank order, so call it on every rank (it is a collective, like ``compute``).
        Empty when nothing was kept.
        """
        _check_score_kind(kind)
        synced = self._is_synced
        with self.sync_context(
            dist_sync_fn=self.dist_sync_fn, should_sync=self.sync_on_compute and not synced, should_unsync=not synced
        ):
            values = getattr(self, _SCORE_STATES[kind])
            if isinstance(values, list) and not values:
                return torch.zeros(0, dtype=torch.float64, device=self.device)
            return dim_zero_cat(values)

    def _stored(self) -> int:
        """Number of scores kept on this rank (shapes only: no host sync)."""
        return sum(int(part.shape[0]) for part in self.max_softmax_scores)

    def _reduce_states(self, incoming_state: dict[str, Any]) -> None:
        """``forward`` and ``merge_state`` concatenate the kept scores (incoming state first): keep ``max_samples``."""
        super()._reduce_states(incoming_state)
        if self.max_samples is None:
            return
        for state in _SCORE_STATES.values():
            parts, left = [], self.max_samples
            for part in getattr(self, state):
                if left <= 0:
                    break
                parts.append(part[:left])
                left -= int(part.shape[0])
            setattr(self, state, parts)

    def _sync_dist(self, dist_sync_fn: Callable = gather_all_tensors, process_group: Any | None = None) -> None:
        """A rank without scores would send torchmetrics' placeholder in the default dtype: send float64 instead."""
        for state in _SCORE_STATES.values():
            if isinstance(getattr(self, state), list) and not getattr(self, state):
                setattr(self, state, [torch.zeros(0, dtype=torch.float64, device=self.device)])
        super()._sync_dist(dist_sync_fn, process_group)
