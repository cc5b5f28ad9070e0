"""torchmetrics state of the shift test: the seeded sample of :class:`~lightning_gensens.metrics.LogitSample`, with
each kept sample's input features (and, where captured, the input of the output layer) beside its logits and
label."""

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
    hashed to at most ``dims`` features; float32) and, where every batch came with it, the input of the network's
    output layer (hashed likewise to at most ``head_dims``). ``compute()`` adds ``features`` [n, d] and, where every
    sample came with one, ``heads`` [n, D], in the rows' order."""

    features: list[Tensor]
    width: Tensor
    heads: list[Tensor]
    head_width: Tensor
    headless: Tensor

    def __init__(
        self, max_samples: int | None = 2048, seed: int = 0, dims: int = 128, head_dims: int = 2048, **kwargs: Any
    ) -> None:
        super().__init__(max_samples=max_samples, seed=seed, **kwargs)
        for name, value in (("dims", dims), ("head_dims", head_dims)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        self.dims, self.head_dims = dims, head_dims
        self.add_state("features", [], dist_reduce_fx="cat")
        self.add_state("width", torch.zeros((), dtype=torch.long), dist_reduce_fx="max")
        self.add_state("heads", [], dist_reduce_fx="cat")
        self.add_state("head_width", torch.zeros((), dtype=torch.long), dist_reduce_fx="max")
        self.add_state("headless", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(
        self, logits: Tensor, labels: Tensor | None = None, inputs: Tensor | None = None, heads: Tensor | None = None
    ) -> None:
        """Add a batch of logits [B, K], optionally its labels, its inputs [B, ...] (required) and optionally the
        inputs of the output layer [B, D]."""
        if inputs is None or inputs.shape[0] != logits.shape[0]:
            raise ValueError("InputSample needs the batch's inputs, one row per logit row.")
        if heads is not None and heads.shape[0] != logits.shape[0]:
            raise ValueError("the output layer's inputs must have one row per logit row.")
        self._append(inputs, self.dims, self.width, self.features, "inputs")
        if heads is None:  # the heads are read only while no sample came without one
            self.headless.add_(logits.shape[0])
        else:
            self._append(heads, self.head_dims, self.head_width, self.heads, "the output layer's inputs")
        super().update(logits, labels)  # after the rows are appended: it trims them

    def _append(self, batch: Tensor, dims: int, width: Tensor, state: list[Tensor], what: str) -> None:
        features = input_features(batch.detach(), dims, self.seed).to(torch.float32)
        if int(width) and features.shape[1] != int(width):
            raise ValueError(f"{what} give {features.shape[1]} features per sample, earlier batches {int(width)}.")
        width.fill_(features.shape[1])
        state.append(features.reshape(-1))

    def compute(self) -> dict[str, Tensor]:
        """The kept sample of :class:`LogitSample` with its ``features`` (float32 [n, d]) and ``heads`` (float32
        [n, D]; absent where some sample came without one)."""
        out = super().compute()
        out["features"] = self._rows(self.features, self.width).float()  # a dtype move casts every state
        if not int(self.headless):
            out["heads"] = self._rows(self.heads, self.head_width).float()
        return out

    def _rows(self, state: list[Tensor], width: Tensor) -> Tensor:
        """A state's rows [n, width] of the kept samples, in priority order."""
        return dim_zero_cat(state).reshape(-1, max(int(width), 1))[self._order()]

    def _keep(self, k: int) -> None:
        features = self._rows(self.features, self.width)
        heads = None if int(self.headless) else self._rows(self.heads, self.head_width)
        super()._keep(k)
        self.features = [features.reshape(-1)]
        self.heads = [] if heads is None else [heads.reshape(-1)]

    def _sync_dist(self, dist_sync_fn: Callable = gather_all_tensors, process_group: Any | None = None) -> None:
        for state in ("features", "heads"):
            if not getattr(self, state):
                setattr(self, state, [torch.zeros(0, dtype=torch.float32, device=self.device)])
        super()._sync_dist(dist_sync_fn, process_group)
