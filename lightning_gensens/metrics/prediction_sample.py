"""torchmetrics state of agreement-on-the-line (Baek et al., NeurIPS 2022): the argmax predictions (and labels) of a
seeded subset of one split's stream positions, the same positions every run, identical on every DDP rank after
``compute``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat
from torchmetrics.utilities.distributed import gather_all_tensors

from lightning_gensens.functional.confidence import _check_logits
from lightning_gensens.metrics._samples import check_limit
from lightning_gensens.metrics.logit_sample import class_labels

_DTYPES = {"predictions": torch.long, "labels": torch.long, "keys": torch.float64}
_GOLDEN = 0x9E3779B97F4A7C15 - 2**64
_MIX = (0xBF58476D1CE4E5B9 - 2**64, 0x94D049BB133111EB - 2**64)


def _shift(z: Tensor, bits: int) -> Tensor:
    """Logical right shift of int64 ``z`` (torch shifts signed integers arithmetically)."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def _mix(z: Tensor) -> Tensor:
    """SplitMix64's finaliser (Steele et al., OOPSLA 2014): a bijection of int64 that scatters neighbours."""
    z = (z ^ _shift(z, 30)) * _MIX[0]
    z = (z ^ _shift(z, 27)) * _MIX[1]
    return z ^ _shift(z, 31)


def position_keys(positions: Tensor, seed: int) -> Tensor:
    """Uniform [0, 1) priorities of stream ``positions`` (int64) under ``seed``: a hash, the same on every device
    and every call (float64 of 53 bits, so a ``set_dtype(float64)`` keeps them)."""
    offset = _mix(torch.tensor(seed, dtype=torch.long, device=positions.device))
    return _shift(_mix(offset + positions * _GOLDEN), 11).to(torch.float64) * 2.0**-53


class PredictionSample(Metric):
    """The argmax predictions and labels of at most ``max_samples`` seeded stream positions of one split.

    The n-th sample a rank feeds since the last ``reset`` gets the priority :func:`position_keys` (n, ``seed`` +
    7919·rank); the ``max_samples`` smallest priorities are kept (a bottom-k sketch). The priorities depend on the
    positions alone, so a split fed in the same order every run keeps the same samples in the same order every run:
    the rows of two runs' ``compute()`` are the same samples, which is what agreement rates between checkpoints
    compare. Merging batches or ranks keeps the smallest priorities of the union, so ``compute()`` returns the same
    rows on every rank. Labels as :class:`~lightning_gensens.metrics.LogitSample` keeps them (``-1`` without).

    ``compute()`` returns ``predictions`` and ``labels`` (long [n], rows ordered by priority) and ``count`` (every
    sample seen, all ranks).
    """

    is_differentiable = False
    higher_is_better: bool | None = None
    full_state_update = True
    """``forward`` updates the running state first, so its positions go on from the samples seen (a reduced
    batch state would number the batch from 0); :meth:`merge_state` merges as a plain reduction."""

    predictions: list[Tensor]
    labels: list[Tensor]
    keys: list[Tensor]
    count: Tensor

    def __init__(self, max_samples: int | None = 4096, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_samples, self.seed = check_limit(max_samples), seed
        for state in _DTYPES:
            self.add_state(state, [], dist_reduce_fx="cat")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: Tensor, labels: Tensor | None = None) -> None:
        """Add a batch of logits [B, K] (K ≥ 2) and optionally its labels [B] or class probabilities [B, K]."""
        z = _check_logits(logits, allow_empty=True)
        n = z.shape[0]
        y = class_labels(labels, z)
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        positions = self.count.long() + torch.arange(n, device=z.device)
        self.keys.append(position_keys(positions, self.seed + 7919 * rank))
        self.predictions.append(z.argmax(dim=1))
        self.labels.append(y.to(z.device))
        self.count += n
        self._keep()

    def compute(self) -> dict[str, Tensor]:
        """The kept rows (synced over ranks) and the number of samples seen; an error when nothing was fed."""
        if int(self.count) == 0:
            raise ValueError("PredictionSample saw no samples: nothing to compute.")
        _, predictions, labels = self._sample()
        # a dtype move (``set_dtype``) casts every state: the integer ones come back as integers
        return {"predictions": predictions.long(), "labels": labels.long(), "count": self.count.long()}

    def merge_state(self, incoming_state: dict[str, Any] | Metric) -> None:
        """Merge another rank's state (or a dict of states): the smallest priorities of the union."""
        if isinstance(incoming_state, Metric):
            if not isinstance(incoming_state, PredictionSample):
                raise ValueError(f"expected a PredictionSample, got {type(incoming_state).__name__}.")
            incoming_state = incoming_state.metric_state
        self._reduce_states(incoming_state)

    def _sample(self) -> tuple[Tensor, Tensor, Tensor]:
        """The kept rows ordered by priority: (keys, predictions, labels), each [n]."""
        keys = dim_zero_cat(self.keys)
        limit = keys.shape[0] if self.max_samples is None else min(self.max_samples, keys.shape[0])
        order = torch.topk(keys, limit, largest=False, sorted=True).indices
        return keys[order], dim_zero_cat(self.predictions)[order], dim_zero_cat(self.labels)[order]

    def _keep(self) -> None:
        """One tensor per state holding the kept rows in priority order (the same whatever the merges before)."""
        keys, predictions, labels = self._sample()
        self.keys, self.predictions, self.labels = [keys], [predictions], [labels]

    def _reduce_states(self, incoming_state: dict[str, Any]) -> None:
        super()._reduce_states(incoming_state)
        if self.keys:
            self._keep()

    def _sync_dist(self, dist_sync_fn: Callable = gather_all_tensors, process_group: Any | None = None) -> None:
        """A rank without samples would send torchmetrics' placeholder in the default dtype: send its own dtypes."""
        for state, dtype in _DTYPES.items():
            if isinstance(getattr(self, state), list) and not getattr(self, state):
                setattr(self, state, [torch.zeros(0, dtype=dtype, device=self.device)])
        super()._sync_dist(dist_sync_fn, process_group)
