"""Bounded lists of kept samples as metric states: trimmed to the first ``limit`` rows after every merge.

``forward`` (and ``merge_state``) update a freshly reset state with the batch and then concatenate the global
state in front of it; trimming after that merge keeps exactly the rows ``update`` alone would have kept.
"""

from __future__ import annotations

from torch import Tensor


def check_limit(max_samples: int | None) -> int | None:
    """``max_samples`` if it is a positive int or None, else a ValueError."""
    if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, int)):
        raise ValueError(f"max_samples must be an int or None, got {max_samples!r}.")
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be positive or None, got {max_samples}.")
    return max_samples


def rows(tensors: list[Tensor] | Tensor) -> int:
    """Number of rows kept in a list state (a single tensor once synced)."""
    return tensors.shape[0] if isinstance(tensors, Tensor) else sum(t.shape[0] for t in tensors)


def keep_first(tensors: list[Tensor], limit: int) -> list[Tensor]:
    """The first ``limit`` rows of the concatenation of ``tensors``, as a list; a cut tensor is copied."""
    kept: list[Tensor] = []
    room = limit
    for t in tensors:
        if room <= 0:
            break
        kept.append(t if t.shape[0] <= room else t[:room].clone())
        room -= kept[-1].shape[0]
    return kept
