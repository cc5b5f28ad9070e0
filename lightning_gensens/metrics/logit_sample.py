"""torchmetrics state of the optimal-transport estimators (Lu et al. 2023): a seeded uniform sample of one split's
logits and labels, bounded in memory and identical on every DDP rank after ``compute``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat
from torchmetrics.utilities.distributed import gather_all_tensors

from lightning_gensens.functional.confidence import _check_logits
from lightning_gensens.metrics._random import device_generator
from lightning_gensens.metrics._samples import check_limit

UNLABELED = -1
"""The label kept for a sample that came without one."""
_DTYPES = {"logits": torch.float64, "labels": torch.long, "keys": torch.float64}


def class_labels(labels: Tensor | None, logits: Tensor) -> Tensor:
    """Class indices [B] of a batch with ``logits`` [B, K]: integer labels as given, class probabilities [B, K] as
    their argmax, ``None`` as :data:`UNLABELED` (shapes only: no host sync)."""
    n = logits.shape[0]
    if labels is None:
        return torch.full((n,), UNLABELED, dtype=torch.long, device=logits.device)
    if labels.is_floating_point() and labels.shape == logits.shape:
        return labels.argmax(dim=1)
    if labels.dim() == 1 and labels.shape[0] == n and not labels.is_floating_point():
        return labels.long()
    raise ValueError(f"labels must be [B] class indices or [B, K] probabilities, got {tuple(labels.shape)}.")


class LogitSample(Metric):
    """A uniform random sample without replacement of at most ``max_samples`` (logits, label) pairs of one split.

    Every sample draws a priority uniform in [0, 1) from a private generator (seeded with ``seed`` + 7919·rank);
    the sample keeps the ``max_samples`` smallest priorities (a bottom-k sketch). Merging batches or ranks keeps the
    smallest priorities of the union, so ``compute()`` returns the same sample on every rank and the same as one
    process would keep with the ranks' generators, whatever the order of the batches. The rows are trimmed to the
    ``max_samples`` kept whenever they exceed twice that, so memory stays under 2 × ``max_samples`` rows plus a
    batch, and a batch costs O(``max_samples``) work at most every ``max_samples`` samples. Integer labels
    are kept as given (no range check, no host sync); class probabilities [B, K] as their argmax; a batch without
    labels as ``-1``.

    ``compute()`` returns ``logits`` (float64 [n, K]), ``labels`` (long [n], ``-1`` where unlabeled) and ``count``
    (every sample seen, all ranks), rows ordered by priority.
    """

    is_differentiable = False
    higher_is_better: bool | None = None
    full_state_update = False

    logits: list[Tensor]
    labels: list[Tensor]
    keys: list[Tensor]
    count: Tensor
    num_classes: Tensor

    def __init__(self, max_samples: int | None = 4096, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_samples, self.seed = check_limit(max_samples), seed
        self._generators: dict[torch.device, torch.Generator] = {}
        for state in _DTYPES:
            self.add_state(state, [], dist_reduce_fx="cat")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("num_classes", torch.zeros((), dtype=torch.long), dist_reduce_fx="max")

    def update(self, logits: Tensor, labels: Tensor | None = None) -> None:
        """Add a batch of logits [B, K] (K ≥ 2) and optionally its labels [B] or class probabilities [B, K]."""
        z = _check_logits(logits, allow_empty=True)
        n, k = z.shape
        y = class_labels(labels, z)
        generator = device_generator(self._generators, self.seed, z.device)
        self.keys.append(torch.rand(n, generator=generator, device=z.device, dtype=torch.float64))
        self.logits.append(z.reshape(-1))
        self.labels.append(y.to(z.device))
        self.count.add_(n)  # in place: no ``nn.Module.__setattr__``
        self.num_classes.clamp_(min=k)
        self._trim(k)

    def compute(self) -> dict[str, Tensor]:
        """The kept sample (synced over ranks) and the number of samples seen; an error when nothing was fed."""
        k = int(self.num_classes)
        if k == 0:
            raise ValueError("LogitSample saw no samples: nothing to compute.")
        keys, logits, labels = self._sample(k)
        # a dtype move (``set_dtype``) casts every state: the integer ones come back as integers
        return {"logits": logits.double(), "labels": labels.long(), "count": self.count.long()}

    def _sample(self, k: int) -> tuple[Tensor, Tensor, Tensor]:
        """The kept rows ordered by priority: (keys [n], logits [n, K], labels [n])."""
        keys, order = dim_zero_cat(self.keys), self._order()
        logits = dim_zero_cat(self.logits).reshape(-1, k)
        return keys[order], logits[order], dim_zero_cat(self.labels)[order]

    def _order(self) -> Tensor:
        """Indices of the kept rows among all held, in priority order."""
        keys = dim_zero_cat(self.keys)
        limit = keys.shape[0] if self.max_samples is None else min(self.max_samples, keys.shape[0])
        return torch.topk(keys, limit, largest=False, sorted=True).indices

    def _trim(self, k: int) -> None:
        """Keep the ``max_samples`` rows of smallest priority once more than twice that many are held."""
        if self.max_samples is not None and sum(t.shape[0] for t in self.keys) > 2 * self.max_samples:
            self._keep(k)

    def _keep(self, k: int) -> None:
        """One tensor per state holding the kept rows in priority order (the same whatever the merges before)."""
        keys, logits, labels = self._sample(k)
        self.keys, self.logits, self.labels = [keys], [logits.reshape(-1)], [labels]

    def _reduce_states(self, incoming_state: dict[str, Any]) -> None:
        """``forward`` and ``merge_state`` concatenate the samples: keep the smallest priorities."""
        super()._reduce_states(incoming_state)
        if int(self.num_classes) > 0:
            self._trim(int(self.num_classes))

    def _sync_dist(self, dist_sync_fn: Callable = gather_all_tensors, process_group: Any | None = None) -> None:
        """A rank without samples would send torchmetrics' placeholder in the default dtype: send its own dtypes."""
        for state, dtype in _DTYPES.items():
            if isinstance(getattr(self, state), list) and not getattr(self, state):
                setattr(self, state, [torch.zeros(0, dtype=dtype, device=self.device)])
        super()._sync_dist(dist_sync_fn, process_group)
