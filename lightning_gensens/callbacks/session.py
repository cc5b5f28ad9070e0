"""One fit's measuring: the measures defined for the model, their Metrics per split, feeding them, and fault
isolation; the ranks' agreement and the evaluation are :class:`~lightning_gensens.callbacks.evaluation.Evaluation`'s."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lightning.fabric.utilities.rank_zero import rank_prefixed_message
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torchmetrics import Metric

from lightning_gensens.callbacks.budget import Need
from lightning_gensens.callbacks.evaluation import Evaluation
from lightning_gensens.callbacks.slots import POOL_PROBLEMS, Agreement, Slot, label_problem, no_labels, read_shared
from lightning_gensens.callbacks.stopwatch import MEASURE, Stopwatch
from lightning_gensens.capture import Captured, exclusive
from lightning_gensens.measures import Measure, Requirement, Settings
from lightning_gensens.measures.base import SPLITS, WEIGHTS
from lightning_gensens.metrics.split_loss import SplitLoss
from lightning_gensens.replay import Replay
from lightning_gensens.utilities import evaluation_mode

__all__ = ["POOL_PROBLEMS", "Session", "Slot"]


class Session(Evaluation):
    """The measures of one fit on ``net``, fed from captured forward passes split by split.

    Applicability is checked in eval mode, the state measuring runs in. A measure that raises while measuring is
    switched off for the rest of the fit with one warning (``strict`` re-raises); under DDP (``rank`` set) on every
    rank, once they agreed (:meth:`agree`), and the warning names the rank that failed.
    """

    def __init__(
        self,
        owner: str,
        net: nn.Module,
        measures: Sequence[Measure[Any]],
        defaults: Settings,
        replay: Replay,
        *,
        pools: Sequence[str] = (),
        recommend: Mapping[str, Mapping[str, str]] | None = None,
        explicit: bool,
        strict: bool,
        rank: int | None = None,
        stopwatch: Stopwatch | None = None,
    ) -> None:
        self.stopwatch = stopwatch or Stopwatch()
        """Each step of a measure is timed in its section (``measure/<name>``)."""
        self.owner, self.net, self.defaults, self.strict, self.replay = owner, net, defaults, strict, replay
        self.explicit, self.rank = explicit, rank
        self.pools = [f"pool/{name}" for name in pools]
        self.recommend = {reference: dict(chosen) for reference, chosen in (recommend or {}).items()}
        self._recommended_logged: set[tuple[str, str]] = set()
        self._pools_measured: set[str] = set()
        self._warned_unlabeled_probe = False
        self.slots = [self._slot(m) for m in self._applicable(measures, explicit)]
        self.split_loss = {split: SplitLoss(defaults.loss_fn) for split in (*SPLITS, *self.pools)}
        self.example: Captured | None = None
        self._seen: dict[str, int] = {}
        """Samples fed this run on this rank, per split."""
        self._sizes: dict[str, int] = {}
        self._priorities: dict[str, Tensor] = {}
        """Per split, a seeded random order of its samples: the ones a limited measure takes (:meth:`_share`)."""
        self._problems: dict[str, set[str]] = {}
        """What was wrong with each pool's batches this run on this rank (keys of :data:`POOL_PROBLEMS`)."""
        self._agreed: Agreement | None = None
        self._warned: set[tuple[str, str]] = set()
        self._outputs_checked = False
        self._device: torch.device | None = None
        self._reset = False
        """Whether nothing was fed or agreed on since the last :meth:`reset`."""

    def needs(self, requirement: Requirement) -> bool:
        return any(slot.measure.needs(requirement) for slot in self.slots)

    @property
    def active(self) -> list[Measure[Any]]:
        return [slot.measure for slot in self.slots if not slot.failed]

    def metrics(self) -> list[Metric]:
        return [*self.split_loss.values(), *(m for s in self.slots for m in s.own.values())]

    def to(self, device: torch.device) -> None:
        """Keep every Metric's state on ``device`` (the model's, which Lightning may move between runs)."""
        if device != self._device:
            for metric in self.metrics():
                metric.to(device)
            self._device = device

    def budget_needs(self) -> dict[str, Need]:
        """Per running measure, what it would use this run (see :class:`~lightning_gensens.callbacks.budget.Need`)."""
        needs = {}
        for slot in self.slots:
            if not slot.failed:
                if slot.measure.needs(Requirement.WEIGHT_ONLY):
                    needs[slot.measure.name] = Need(1, 1, slot.relative_cost)
                else:
                    splits = [s for s in slot.keys if s in self._sizes] or list(slot.keys)
                    samples = sum(self._sizes.get(s, 0) for s in splits)
                    needs[slot.measure.name] = Need(samples, len(splits), slot.relative_cost)
        return needs

    def plan(self, caps: dict[str, int | None]) -> None:
        """Set each measure's samples per split for the coming run, and the Metrics it reads."""
        for slot in self.slots:
            slot.cap = caps.get(slot.measure.name)
        read_shared(self.slots)
        # Metrics that fail to be made pass their readers to the first of them, which makes its own next
        while pending := [slot for slot in self.slots if slot.runs and slot.source is None and not slot.own]:
            self._guard(pending[0], "creating its metrics", self._create_metrics, pending[0])

    def _create_metrics(self, slot: Slot) -> None:
        metrics = {key: slot.measure.make_metric(self.net, slot.settings) for key in slot.keys}
        slot.own = {key: m if self._device is None else m.to(self._device) for key, m in metrics.items()}

    def running(self, requirement: Requirement) -> bool:
        """Whether a measure that runs this run needs ``requirement``."""
        return any(slot.runs and slot.measure.needs(requirement) for slot in self.slots)

    def ran(self) -> dict[str, int]:
        """This run's samples of every measure that ran (on some rank: the same keys on every rank)."""
        return {slot.measure.name: sum(slot.fed.values()) or 1 for slot in self.slots if slot.runs and slot.ran}

    def reset(self) -> None:
        """Forget the run: what was fed, and every Metric's state (none where nothing was fed or agreed on since
        the last reset: a run's end and the next one's start reset once)."""
        if self._reset:
            return
        self._reset = True
        self.example = None
        if self._seen:
            self._sizes = dict(self._seen)
        self._seen, self._problems, self._agreed = {}, {}, None
        for slot in self.slots:
            slot.fed, slot.agreed, slot.ran = {}, {}, False
        self.replay.clear()
        for split_loss in self.split_loss.values():  # computed (and cached) on every rank, updated or not
            split_loss.reset()
        for metric in (metric for slot in self.slots for metric in slot.own.values()):
            if metric.update_count:  # a Metric never updated holds its defaults already
                metric.reset()

    def feed(self, split: str, record: Captured) -> None:
        """Update the split's loss and every data measure with one forward pass. A pool's labels only score its
        loss: its measures never see them. No capture records the measures' own forward passes."""
        if record.logits.shape[0] == 0:
            return
        self._reset = False
        if not self._outputs_checked:
            self._check_outputs(record)
        if split in self.pools and not self._pool_usable(split, record):
            return
        if self.example is None:
            self.example = record
        elif record.x.shape[1:] != self.example.x.shape[1:]:
            raise ValueError(
                f"the {split} batches have inputs of shape {tuple(record.x.shape[1:])}, but the model was measured on "
                f"inputs of shape {tuple(self.example.x.shape[1:])}."
            )
        offset = self._seen.get(split, 0)
        self._seen[split] = offset + record.logits.shape[0]
        if record.y is not None:
            self.split_loss[split].update(record.logits, record.y)
        self._remember(record)
        # the math kernel of attention: the double backward curvature needs exists for it (on CPU, not the others)
        with exclusive(None), sdpa_kernel(SDPBackend.MATH):
            for slot in self.slots:
                if not slot.wants(split):
                    continue
                part = self._share(slot, split, offset, record)
                if part is None:
                    continue
                if part is not record:
                    self._remember(part)
                slot.fed[split] = slot.fed.get(split, 0) + part.logits.shape[0]
                if slot.measure.needs(Requirement.LABELS) and record.y is None:
                    self._guard(slot, "reading labels", no_labels, slot.measure, split)
                if slot.source is not None:
                    continue  # its source feeds the Metrics it reads
                with self.replay.replaying(part.call):
                    metric = slot.metrics[split]
                    self._guard(slot, f"updating on {split} data", slot.measure.update, metric, part, self.net)
                if slot.failed:  # what it failed to feed may hold part of the batch: no measure reads it
                    for reader in (other for other in self.slots if other.metrics.get(split) is metric):
                        reader.error = (
                            f"{reader.measure.name} read the Metrics of {slot.measure.name}, which failed to feed them"
                        )
                        self._switch_off(reader)

    def _remember(self, record: Captured) -> None:
        """Keep a call that is more than ``net(x)`` for the measures that call the model at the end of the run."""
        call = record.call
        if call is not None and not (call.plain and call.input.is_floating_point()):
            self.replay.remember(record.x, call)

    def _pool_usable(self, split: str, record: Captured) -> bool:
        """Whether a pool's batch can be measured; its labels score the pool where they can, and are dropped. What
        is wrong with it is noted, and said once the ranks agreed."""
        problems = self._problems.setdefault(split, set())
        if "inputs" in problems or not bool(torch.isfinite(record.x).all()):
            problems.add("inputs")
            return False
        if record.y is not None and not problems:
            problem = label_problem(record.logits, record.y)
            if problem is None:
                try:
                    self.split_loss[split].update(record.logits, record.y)
                except Exception:  # noqa: BLE001 - any loss may refuse labels; the pool goes unscored
                    problem = "labels"
            if problem is not None:
                problems.add(problem)
        record.y = None
        return True

    def _share(self, slot: Slot, split: str, offset: int, record: Captured) -> Captured | None:
        """The samples of ``record`` (at ``offset`` in this run's stream of ``split``) a measure limited to
        ``slot.cap`` samples takes: a seeded random ``cap`` of as many samples as the split had the run before, or,
        before any run saw the split, the first ``cap``. None where it takes none."""
        size = record.logits.shape[0]
        if slot.cap is None:
            return record
        total = self._sizes.get(split)
        if total is None:
            taken = min(slot.cap - slot.fed.get(split, 0), size)
            rows: slice | Tensor = slice(taken)
        else:
            priorities = self._priorities.get(split)
            if priorities is None or priorities.numel() != total:
                generator = torch.Generator().manual_seed(self.defaults.seed)
                priorities = self._priorities[split] = torch.randperm(total, generator=generator)
            chosen = (priorities[offset : offset + size] < slot.cap).nonzero().squeeze(1)
            rows, taken = chosen.to(record.logits.device), chosen.numel()
        if taken == 0:
            return None
        return record if taken == size else record.take(rows)

    def _applicable(self, measures: Sequence[Measure[Any]], explicit: bool) -> list[Measure[Any]]:
        chosen = []
        if not self.pools:  # a measure of pools only has nothing to do: an error where asked for, else left out
            asked = [m.name for m in measures if m.pools_only]
            if asked and explicit:
                raise ValueError(f"{', '.join(asked)} measures pools only, and the monitor has none (`unlabeled=`).")
            measures = [m for m in measures if not m.pools_only]
        with evaluation_mode(self.net):
            for m in measures:
                problem = m.check(self.net)
                if problem is None:
                    chosen.append(m)
                    note = m.describe(self.net)
                    if note is not None:
                        rank_zero_info(f"{self.owner}: {note}")
                elif explicit:
                    raise ValueError(problem)
                else:  # a measure's problem may name it already
                    rank_zero_info(f"{self.owner}: skipping {m.name}: {problem.removeprefix(f'{m.name}: ')}")
        return chosen

    def _slot(self, measure: Measure[Any]) -> Slot:
        settings = measure.settings(self.defaults)
        if measure.needs(Requirement.WEIGHT_ONLY):
            keys: Sequence[str] = (WEIGHTS,)
        else:  # a pool's labels never reach a measure, so label-needing measures do not predict for pools
            keys = SPLITS if measure.needs(Requirement.LABELS) else (*SPLITS, *self.pools)
        return Slot(measure, settings, keys, measure.relative_cost_for(self.net))

    def _guard(self, slot: Slot, action: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one step of a measure; if it raises, switch the measure off for the rest of the fit with one warning
        (said once the ranks agreed, :meth:`agree`). Out of CUDA memory, the cache is emptied too."""
        if slot.failed:
            return None
        out_of_memory = False
        try:
            with self.stopwatch(MEASURE + slot.measure.name):
                return fn(*args)
        except Exception as err:
            if self.strict:
                raise
            out_of_memory = isinstance(err, torch.cuda.OutOfMemoryError)
            slot.error = f"{slot.measure.name} raised {type(err).__name__} while {action}: {err}"
            self._switch_off(slot)
            if self._agreed is not None:  # evaluating: no rank will agree on it this run
                self._announce(slot)
            return None
        finally:  # the error and its frames are gone: what they held can be freed
            if out_of_memory and torch.cuda.is_initialized():
                torch.cuda.empty_cache()

    def _announce(self, slot: Slot) -> None:
        """Say why ``slot`` was switched off, prefixed by this rank under DDP (any rank may be the one to say it)."""
        message = f"{self.owner}: {slot.error} — it is switched off for the rest of this fit; training goes on."
        slot.error = None
        if self.rank is None:
            rank_zero_warn(message)
        else:
            warnings.warn(rank_prefixed_message(message, self.rank), UserWarning, stacklevel=2)

    def _switch_off(self, slot: Slot) -> None:
        """For the rest of the fit; its Metrics' memory is freed, or handed to the first measure reading them, which
        the others then read."""
        slot.failed, slot.source, own, slot.own = True, None, slot.own, {}
        readers = [other for other in self.slots if other.source is slot and not other.failed]
        for reader in readers:
            reader.source = None if reader is readers[0] else readers[0]
        if readers:
            readers[0].own = own

    def _check_outputs(self, record: Captured) -> None:
        """At the first record: refuse a classification loss on outputs it cannot score, and skip the measures
        that need class logits on other outputs."""
        self._outputs_checked = True
        logits, y = record.logits, record.y
        soft_labels = y is not None and y.is_floating_point() and y.shape == logits.shape  # class probabilities
        regression = (
            logits.ndim != 2 or logits.shape[1] < 2 or (y is not None and y.is_floating_point() and not soft_labels)
        )
        if regression and self.defaults.loss_fn is F.cross_entropy and y is not None:
            raise ValueError(
                f"the model outputs shape {tuple(logits.shape)} with {y.dtype} targets, which the default "
                "cross-entropy cannot score: pass `loss_fn=` (e.g. torch.nn.functional.mse_loss) for regression."
            )
        for slot in self.slots:
            if regression and slot.measure.needs(Requirement.CLASS_LOGITS):
                self._skip(slot, "it needs class logits [B, K].")
            if y is None and slot.measure.needs(Requirement.LABELS):
                self._skip(slot, "it needs labels, but the validation batches carry none.")

    def _skip(self, slot: Slot, reason: str) -> None:
        """Switch off a measure the data does not suit: an error when strict, a warning when the user named it."""
        if slot.failed:
            return
        message = f"{self.owner}: skipping {slot.measure.name}: {reason}"
        if self.strict:
            raise ValueError(message)
        self._switch_off(slot)
        (rank_zero_warn if self.explicit else rank_zero_info)(message)
