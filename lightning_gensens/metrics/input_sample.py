"""torchmetrics state of the shift test: the seeded sample of :class:`~lightning_gensens.metrics.LogitSample`, with
each kept sample's input features beside its logits and label."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torchmetrics.utilities import dim_zero_cat
from torchmetrics.utilities.distributed import gather_all_tensors

from lightning_gensens.functional.shift_test import input_features
from lightning_gensens.metrics.logit_sample import LogitSample


class InputSample(LogitSample):
    """A :class:`~lightning_gensens.metrics.LogitSample` (a uniform bottom-k sample of at most ``max_samples``
    samples, the same on every rank after ``compute``) that also keeps each sample's input features
    (:func:`~lightning_gensens.functional.shift_test.input_features`: flattened, sequences averaged over positions,
    hashed to at most ``dims`` features; float32). ``compute()`` adds ``features`` [n, d] in the rows' order."""

    features: list[Tensor]
    width: Tensor

    def __init__(self, max_samples: int | None = 2048, seed: int = 0, dims: int = 128, **kwargs: Any) -> None:
        super().__init__(max_samples=max_samples, seed=seed, **kwargs)
        if isinstance(dims, bool) or not isinstance(dims, int) or dims < 1:
            raise ValueError(f"dims must be a positive int, got {dims!r}.")
        self.dims = dims
        self.add_state("features", [], dist_reduce_fx="cat")
        self.add_state("width", torch.zeros((), dtype=torch.long), dist_reduce_fx="max")

    def update(self, logits: Tensor, labels: Tensor | None = None, inputs: Tensor | None = None) -> None:
        """Add a batch of logits [B, K], optionally its labels, and its inputs [B, ...] (required)."""
        if inputs is None or inputs.shape[0] != logits.shape[0]:
            raise ValueError("InputSample needs the batch's inputs, one row per logit row.")
        features = input_features(inputs.detach(), self.dims, self.seed).to(torch.float32)
        if int(self.width) and features.shape[1] != int(self.width):
            raise ValueError(f"inputs give {features.shape[1]} features per sample, earlier batches {int(self.width)}.")
        self.width.fill_(features.shape[1])
        self.features.append(features.reshape(-1))  # before the rows are trimmed in ``super().update``
        super().update(logits, labels)

    def compute(self) -> dict[str, Tensor]:
        """The kept sample of :class:`LogitSample` with its ``features`` (float32 [n, d])."""
        out = super().compute()
        out["features"] = self._features().float()  # a dtype move casts every state
        return out

    def _features(self) -> Tensor:
        """Features [n, d] of the kept rows, in priority order."""
        return dim_zero_cat(self.features).reshape(-1, max(int(self.width), 1))[self._order()]

    def _keep(self, k: int) -> None:
        features = self._features()
        super()._keep(k)
        self.features = [features.reshape(-1)]

    def _sync_dist(self, dist_sync_fn: Callable = gather_all_tensors, process_group: Any | None = None) -> None:
        if not self.features:
            self.features = [torch.zeros(0, dtype=torch.float32, device=self.device)]
        super()._sync_dist(dist_sync_fn, process_group)
