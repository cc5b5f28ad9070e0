"""A measure during one fit (its slot) and what the ranks agree on after a run's feeding."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_gensens.measures import Measure, Settings

POOL_PROBLEMS = {
    "inputs": "its inputs hold NaN or Inf values, so it is not measured while they do",
    "range": "its labels lie outside the model's classes, so its loss and error are not scored",
    "labels": "the loss cannot score its labels (their dtype or shape does not suit the model's outputs), so its "
    "loss and error are not scored",
}
"""What can be wrong with an unlabeled pool's batches, and what the monitor does about it."""


@dataclass
class Slot:
    """A measure during one fit: its resolved settings, its Metrics, and whether it was switched off."""

    measure: Measure[Any]
    settings: Settings
    keys: Sequence[str]
    """Its Metrics' keys: splits, or the weights."""
    relative_cost: float
    """Its measure's ``relative_cost`` on the model (read once per fit: the budget plans every run with it)."""
    own: dict[str, Metric] = field(default_factory=dict)
    """Its own Metrics, created before its first run that reads them (a measure a budget never runs costs nothing)."""
    source: Slot | None = None
    """The slot whose Metrics it reads this run instead of its own (:meth:`Measure.shares`), or None."""
    failed: bool = False
    cap: int | None = None
    """Samples per split it may use this run (None: all, 0: it does not run)."""
    fed: dict[str, int] = field(default_factory=dict)
    """Samples it was fed this run, per split."""
    agreed: dict[str, int] = field(default_factory=dict)
    """Samples every rank fed it this run, per split (the fewest of any rank), once the ranks agreed."""
    ran: bool = False
    """Whether some rank fed it this run (a weight-only measure: whether it runs), once the ranks agreed."""
    error: str | None = None
    """Why it was switched off, until that is said."""

    @property
    def metrics(self) -> dict[str, Metric]:
        """The Metrics it reads this run: its source's, or its own."""
        return (self.source or self).own

    @property
    def runs(self) -> bool:
        return not self.failed and self.cap != 0

    def wants(self, split: str) -> bool:
        return split in self.keys and self.runs and (self.cap is None or self.fed.get(split, 0) < self.cap)


@dataclass
class Agreement:
    """One run's splits as every rank sees them once the ranks agreed (:meth:`Session.agree`)."""

    seen: dict[str, int]
    """Samples fed over all ranks, per split."""
    labelled: dict[str, int]
    """Labelled samples scored over all ranks, per split."""
    problems: dict[str, set[str]]
    """Each pool's problems on any rank (keys of :data:`POOL_PROBLEMS`)."""
    outputs: int
    """The model's outputs per sample; 0 where a rank saw no forward pass."""


def read_shared(slots: Sequence[Slot]) -> None:
    """Point each running slot whose measure may read another's Metrics on the same samples
    (:meth:`~lightning_gensens.measures.Measure.shares`) at the first such slot that reads its own, those whose
    Metrics most others may read first: they are fed and computed once for all of them."""
    for slot in slots:
        slot.source = None
    running = [slot for slot in slots if slot.runs]
    readers = {id(slot): sum(o.measure.shares(slot.measure) for o in running if o is not slot) for slot in running}
    owners: list[Slot] = []
    for slot in sorted(running, key=lambda slot: -readers[id(slot)]):
        same = (o for o in owners if (o.cap, tuple(o.keys)) == (slot.cap, tuple(slot.keys)))
        slot.source = next((o for o in same if slot.measure.shares(o.measure)), None)
        if slot.source is None:
            owners.append(slot)


def label_problem(logits: Tensor, y: Tensor) -> str | None:
    """What keeps a pool's labels from scoring class logits [B, K] (a key of :data:`POOL_PROBLEMS`), or None."""
    if logits.ndim != 2 or logits.shape[1] < 2 or y.is_floating_point():
        return None  # any other scoring is the loss's to refuse
    if y.shape != logits.shape[:1] or y.dtype == torch.bool or y.is_complex():
        return "labels"
    low, high = torch.aminmax(y)  # an index out of range is a device-side assert on CUDA: never hand it over
    return "range" if int(low) < 0 or int(high) >= logits.shape[1] else None


def no_labels(measure: Measure[Any], split: str) -> None:
    raise ValueError(f"{measure.name} needs labels, but a {split} batch carries none.")
