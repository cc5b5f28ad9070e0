"""The training probe: a fixed sample of training data on which each measure's ``train`` split is evaluated."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from lightning_gensens.batches import BatchToXY, shard
from lightning_gensens.utilities import preserved_rng


class TrainingProbe:
    """``size`` training samples, drawn once per fit and sharded over DDP ranks, kept as the loader's batches.

    From a map-style dataset (the training loader's, or ``source`` when given as a Dataset) the samples are drawn
    uniformly with ``seed`` and collated like the training loader's, a batch when it is first used (a run under a
    budget may use only the first); from anything else (an iterable dataset, a ``CombinedLoader``, a loader given
    as ``source``) the probe is the first batches the loader yields, up to ``size`` samples, read once and kept.
    Drawing never touches the global RNG. Without any training data (``trainer.validate()`` of a model whose
    training loader was given to ``fit`` only, before any fit) the probe is empty and :attr:`missing`.
    """

    def __init__(self, size: int, batch_size: int, seed: int, batch_to_xy: BatchToXY, source: Any = None) -> None:
        self.size, self.batch_size, self.seed, self.batch_to_xy = size, batch_size, seed, batch_to_xy
        self.source = source
        self._batches: list[Any] = []
        self._sizes: list[int] | None = None
        self._pending: list[Subset[Any]] = []
        self._collate: Any = None
        self.missing = False
        """Whether there was no training data to draw from."""

    def reset(self) -> None:
        """Forget the drawn samples (a new fit may train on other data)."""
        self._batches, self._sizes, self._pending, self.missing = [], None, [], False

    def sizes(self, trainer: Trainer) -> list[int]:
        """The sizes of the probe's batches on this rank, drawn at the first call after :meth:`reset`."""
        if self._sizes is None:
            with preserved_rng():  # iterating a DataLoader draws from the global RNG
                self._draw(trainer)
            assert self._sizes is not None
            if not self._sizes and trainer.world_size == 1 and not self.missing:
                raise ValueError("the training probe is empty: the training data yielded no samples.")
        return self._sizes

    def get(self, trainer: Trainer, n: int | None = None) -> list[Any]:
        """The first ``n`` (default: all) of the probe's batches on this rank."""
        sizes = self.sizes(trainer)  # drawn here at the latest
        n = len(sizes) if n is None else n
        while len(self._batches) < n and self._pending:
            with preserved_rng():
                loader = DataLoader(self._pending.pop(0), batch_size=self.batch_size, collate_fn=self._collate)
                self._batches.extend(loader)
        return self._batches[:n]

    def _draw(self, trainer: Trainer) -> None:
        source = self.source if self.source is not None else trainer.train_dataloader
        if source is None:  # trainer.validate(): the training loader the datamodule or the model defines
            for owner in (getattr(trainer, "datamodule", None), getattr(trainer, "lightning_module", None)):
                if owner is not None and is_overridden("train_dataloader", owner):
                    source = owner.train_dataloader()
                    break
        if source is None:
            self._sizes, self.missing = [], True
            return
        dataset = source if isinstance(source, Dataset) else getattr(source, "dataset", None)
        if isinstance(dataset, Dataset) and not isinstance(dataset, IterableDataset) and hasattr(dataset, "__len__"):
            self._draw_map_style(trainer, dataset, getattr(source, "collate_fn", None))
        else:
            self._batches = self._first_samples(trainer, source)
            self._sizes = [self.batch_to_xy(b)[0].shape[0] for b in self._batches]

    def _draw_map_style(self, trainer: Trainer, dataset: Dataset[Any], collate_fn: Any) -> None:
        n = len(dataset)  # type: ignore[arg-type]
        if n == 0:
            raise ValueError("the training dataset is empty, so the probe would be empty.")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        mine = order[: self.size][trainer.global_rank :: trainer.world_size].tolist()
        groups = [mine[i : i + self.batch_size] for i in range(0, len(mine), self.batch_size)]
        self._pending = [Subset(dataset, group) for group in groups]
        self._sizes, self._collate = [len(group) for group in groups], collate_fn

    def _first_samples(self, trainer: Trainer, loader: Iterable[Any]) -> list[Any]:
        """The first batches ``loader`` yields, up to ``size`` samples (whole batches), each sharded over ranks."""
        kept: list[Any] = []
        taken = 0
        for batch in loader:
            batch = batch[0] if isinstance(batch, tuple) and _is_combined(batch) else batch
            kept.append(batch)
            taken += self.batch_to_xy(batch)[0].shape[0]
            if taken >= self.size:
                break
        if not kept:
            raise ValueError("the training loader yielded no batch, so the probe would be empty.")
        return list(shard(kept, self.batch_to_xy, trainer.global_rank, trainer.world_size))


def _is_combined(batch: tuple[Any, ...]) -> bool:
    """Whether ``batch`` is what iterating a Lightning ``CombinedLoader`` yields: ``(batch, batch_idx, loader_idx)``."""
    return len(batch) == 3 and isinstance(batch[1], int) and isinstance(batch[2], int)
