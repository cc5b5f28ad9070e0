"""One fit's measuring: the measures defined for the model, their Metrics per split, fault isolation, the ranks'
agreement on what to compute, and turning computed Metrics into logged values and scored predictions."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from lightning.fabric.utilities.rank_zero import rank_prefixed_message
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torchmetrics import Metric

from lightning_gensens.callbacks.budget import TRIAL_SAMPLES, Need
from lightning_gensens.callbacks.reporting import Report
from lightning_gensens.capture import Captured, exclusive
from lightning_gensens.measures import Measure, Reference, Requirement, Settings
from lightning_gensens.measures.base import SPLITS, WEIGHTS
from lightning_gensens.metrics.split_loss import SplitLoss
from lightning_gensens.replay import Replay
from lightning_gensens.utilities import evaluation_mode, synchronized_time

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
    metrics: dict[str, Metric] = field(default_factory=dict)
    """Created before its first run (a measure a budget never runs costs nothing)."""
    failed: bool = False
    cap: int | None = None
    """Samples per split it may use this run (None: all, 0: it does not run)."""
    seconds: float = 0.0
    """Time it took this run."""
    fed: dict[str, int] = field(default_factory=dict)
    """Samples it was fed this run, per split."""
    agreed: dict[str, int] = field(default_factory=dict)
    """Samples every rank fed it this run, per split (the fewest of any rank), once the ranks agreed."""
    ran: bool = False
    """Whether some rank fed it this run (a weight-only measure: whether it runs), once the ranks agreed."""
    error: str | None = None
    """Why it was switched off, until that is said."""

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


class Session:
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
        recommend: Mapping[str, str] | None = None,
        explicit: bool,
        strict: bool,
        rank: int | None = None,
    ) -> None:
        self.owner, self.net, self.defaults, self.strict, self.replay = owner, net, defaults, strict, replay
        self.explicit, self.rank = explicit, rank
        self.pools = [f"pool/{name}" for name in pools]
        self.recommend = dict(recommend or {})
        self._recommended_logged: set[str] = set()
        self._pools_measured = False
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

    def needs(self, requirement: Requirement) -> bool:
        return any(slot.measure.needs(requirement) for slot in self.slots)

    @property
    def active(self) -> list[Measure[Any]]:
        return [slot.measure for slot in self.slots if not slot.failed]

    def metrics(self) -> list[Metric]:
        return [*self.split_loss.values(), *(m for s in self.slots for m in s.metrics.values())]

    def to(self, device: torch.device) -> None:
        """Keep every Metric's state on ``device`` (the model's, which Lightning may move between runs)."""
        if device != self._device:
            for metric in self.metrics():
                metric.to(device)
            self._device = device

    def seen(self, split: str) -> bool:
        """Whether ``split`` was fed this run on some rank, and is measured (once the ranks agreed)."""
        assert self._agreed is not None
        return self._agreed.seen[split] > 0 and "inputs" not in self._agreed.problems.get(split, ())

    def budget_needs(self) -> dict[str, Need]:
        """Per running measure, what it would use this run (see :class:`~lightning_gensens.callbacks.budget.Need`)."""
        needs = {}
        for slot in self.slots:
            if not slot.failed:
                cost = slot.measure.relative_cost_for(self.net)
                if slot.measure.needs(Requirement.WEIGHT_ONLY):
                    needs[slot.measure.name] = Need(1, 1, cost)
                else:
                    splits = [s for s in slot.keys if s in self._sizes] or list(slot.keys)
                    needs[slot.measure.name] = Need(sum(self._sizes.get(s, 0) for s in splits), len(splits), cost)
        return needs

    def plan(self, caps: dict[str, int | None]) -> None:
        """Set each measure's samples per split for the coming run."""
        for slot in self.slots:
            slot.cap = caps.get(slot.measure.name)
            if slot.runs and not slot.metrics:
                self._guard(slot, "creating its metrics", self._create_metrics, slot)

    def _create_metrics(self, slot: Slot) -> None:
        metrics = {key: slot.measure.make_metric(self.net, slot.settings) for key in slot.keys}
        slot.metrics = {key: m if self._device is None else m.to(self._device) for key, m in metrics.items()}

    def running(self, requirement: Requirement) -> bool:
        """Whether a measure that runs this run needs ``requirement``."""
        return any(slot.runs and slot.measure.needs(requirement) for slot in self.slots)

    def measure_seconds(self) -> float:
        """The time the measures took so far this run."""
        return sum(slot.seconds for slot in self.slots)

    def costs(self) -> tuple[dict[str, float], dict[str, int]]:
        """This run's seconds and samples of every measure that ran (on some rank: the same keys on every rank)."""
        ran = [slot for slot in self.slots if slot.runs and slot.ran]
        seconds = {slot.measure.name: slot.seconds for slot in ran}
        return seconds, {slot.measure.name: sum(slot.fed.values()) or 1 for slot in ran}

    def reset(self) -> None:
        self.example = None
        if self._seen:
            self._sizes = dict(self._seen)
        self._seen, self._problems, self._agreed = {}, {}, None
        for slot in self.slots:
            slot.seconds, slot.fed, slot.agreed, slot.ran = 0.0, {}, {}, False
        self.replay.clear()
        for split_loss in self.split_loss.values():  # computed (and cached) on every rank, updated or not
            split_loss.reset()
        for metric in (metric for slot in self.slots for metric in slot.metrics.values()):
            if metric.update_count:  # a Metric never updated holds its defaults already
                metric.reset()

    def feed(self, split: str, record: Captured) -> None:
        """Update the split's loss and every data measure with one forward pass. A pool's labels only score its
        loss: its measures never see them. No capture records the measures' own forward passes."""
        if record.logits.shape[0] == 0:
            return
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
                    self._guard(slot, "reading labels", _no_labels, slot.measure, split)
                with self.replay.replaying(part.call):
                    metric = slot.metrics[split]
                    self._guard(slot, f"updating on {split} data", slot.measure.update, metric, part, self.net)

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
            problem = _label_problem(record.logits, record.y)
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

    def agree(self, gather: Callable[[Tensor], Tensor] | None = None) -> None:
        """After feeding, make this run the same on every rank before the collectives of :meth:`evaluate`, with one
        gather (``gather``: the strategy's ``all_gather``; None in one process) of each measure's flags and samples
        fed and each split's counts and problems. A measure that failed on any rank is switched off on all (the
        lowest failing rank says why), one some rank was not fed on a split is not computed on it, a split is scored
        where some rank scored labelled samples, and each pool's problems are said once per fit."""
        local = torch.tensor(list(self._local_view()), dtype=torch.float64)
        table = local[None] if gather is None else gather(local.to(self._device)).reshape(-1, local.numel()).cpu()
        columns = iter(table.T)
        for slot in self.slots:
            failed = next(columns)
            fed = {key: next(columns) for key in slot.keys}
            slot.agreed = {key: int(n.min()) for key, n in fed.items()}
            slot.ran = slot.measure.needs(Requirement.WEIGHT_ONLY) or any(bool(n.any()) for n in fed.values())
            if bool(failed.any()):
                if slot.error is not None and self.rank in (None, int(failed.nonzero()[0])):
                    self._announce(slot)
                slot.error = None
                self._switch_off(slot)
        seen = {split: int(next(columns).sum()) for split in self.split_loss}
        labelled = {split: int(next(columns).sum()) for split in self.split_loss}
        problems = {pool: {p for p in POOL_PROBLEMS if bool(next(columns).any())} for pool in self.pools}
        outputs = next(columns)  # 0 on a rank that saw no forward pass: then nothing is evaluated
        self._agreed = Agreement(seen, labelled, problems, int(outputs.min()) and int(outputs.max()))
        self._say_pool_problems(self._agreed)

    def _local_view(self) -> Iterator[float]:
        """This rank's side of :meth:`agree`, in the order it reads the ranks' sides."""
        for slot in self.slots:
            yield float(slot.failed)
            yield from (float(slot.fed.get(key, 0)) for key in slot.keys)
        yield from (float(self._seen.get(split, 0)) for split in self.split_loss)
        yield from (float(metric.count) for metric in self.split_loss.values())
        for pool in self.pools:
            yield from (float(p in self._problems.get(pool, ())) for p in POOL_PROBLEMS)
        yield float(0 if self.example is None else self.example.logits[0].numel())

    def _say_pool_problems(self, agreed: Agreement) -> None:
        """One warning per pool and problem per fit."""
        for pool in self.pools:
            found = sorted(agreed.problems[pool]) or ([] if agreed.seen[pool] else ["empty"])
            for problem in found:
                if (pool, problem) in self._warned:
                    continue
                self._warned.add((pool, problem))
                why = POOL_PROBLEMS.get(problem, "it yielded no samples, so there is nothing to measure")
                rank_zero_warn(f"{self.owner}: pool {pool.removeprefix('pool/')!r}: {why}.")

    def evaluate(self, prefix: str, shared_prefix: str, report: Report) -> dict[str, Tensor]:
        """Compute every measure, log its values, and score its predictions against the actual test loss; for each
        pool, predict its loss from the validation data where there was a validation run, else from the probe.
        Called on every rank once they agreed (:meth:`agree`)."""
        assert self._agreed is not None
        if not self._agreed.outputs:
            return {}
        losses = {split: self._losses(split) for split in self.split_loss}
        logs: dict[str, Tensor] = {}
        for split, name in (("train", "train"), ("val", "test"), *((pool, f"{pool}/test") for pool in self.pools)):
            logs[f"{shared_prefix}/{name}_loss"] = losses[split]["loss"]
            logs[f"{shared_prefix}/{name}_error"] = losses[split]["error"]
        logs = {k: v for k, v in logs.items() if bool(torch.isfinite(v))}  # absent labels: nothing, not NaN
        train = losses["train"]
        if self._agreed.seen["train"] and not bool(torch.isfinite(train["loss"])) and not self._warned_unlabeled_probe:
            self._warned_unlabeled_probe = True
            rank_zero_warn(
                f"{self.owner}: the training probe's batches carry no labels, so there is no train loss for the "
                "estimators to scale: measures are logged, predicted test losses only where they need no train loss."
            )
        outputs = self._agreed.outputs
        pairs = [("", "train", "val")] if self.seen("val") else []
        reference = "val" if self.seen("val") and bool(torch.isfinite(losses["val"]["loss"])) else "train"
        pairs += [(f"{pool}/", reference, pool) for pool in self.pools if self.seen(pool)]
        with self.replay.replaying():
            for group, ref, target in pairs:
                ref_losses = Reference(losses[ref]["loss"], losses[ref]["error"], num_outputs=outputs)
                for slot in self.slots:
                    if not slot.runs:
                        continue
                    if target in slot.keys or (not group and slot.measure.needs(Requirement.WEIGHT_ONLY)):
                        logs.update(
                            self._evaluate(slot, group, ref, target, ref_losses, losses[target], prefix, report)
                        )
        logs.update(self._recommended(logs, prefix, shared_prefix))
        return logs

    def _recommended(self, logs: Mapping[str, Tensor], prefix: str, shared_prefix: str) -> dict[str, Tensor]:
        """Each measured pool's ``pred_test_<kind>``: the recommended estimator's prediction, where it gave one."""
        out = {}
        for kind, estimator in self.recommend.items():
            for pool in (p for p in self.pools if self.seen(p)):
                self._pools_measured = True
                key = f"{prefix}/{pool}/{estimator}/pred_test_{kind}"
                if key in logs:
                    out[f"{shared_prefix}/{pool}/pred_test_{kind}"] = logs[key]
                    self._recommended_logged.add(kind)
        return out

    def unlogged_recommendations(self) -> dict[str, str]:
        """The recommended estimators (per kind) that never predicted for a pool measured in this fit."""
        if not self._pools_measured:
            return {}
        return {kind: e for kind, e in self.recommend.items() if kind not in self._recommended_logged}

    def _evaluate(
        self,
        slot: Slot,
        group: str,
        ref: str,
        target: str,
        reference: Reference,
        actual: dict[str, Tensor],
        prefix: str,
        report: Report,
    ) -> dict[str, Tensor]:
        """One measure's values (``<prefix>/<name>/…``) and its predictions for ``target`` scored as ``group+name``;
        the measure sees ``ref`` as its ``train`` split and ``target`` as its ``val`` split."""
        measure = slot.measure
        if measure.needs(Requirement.WEIGHT_ONLY):
            self._guard(slot, "reading the weights", measure.update, slot.metrics[WEIGHTS], self.example, self.net)
            metrics = slot.metrics
        else:
            metrics = {"train": slot.metrics[ref], "val": slot.metrics[target]}
            if not all(slot.agreed.get(split) for split in (ref, target)):
                return {}  # a split some rank did not feed it (its share of samples ran out, or it has none)
        computed = self._guard(slot, "computing", measure.compute, metrics, self.net, slot.settings)
        if computed is None:
            return {}
        logs: dict[str, Tensor] = {}
        if not group:
            values = self._guard(slot, "reporting", measure.values, computed) or {}
            logs = {f"{prefix}/{measure.name}/{k}": v.double() for k, v in values.items()}
        estimates = self._guard(slot, "estimating", measure.estimate, computed, reference) or {}
        if not bool(torch.isfinite(reference.loss)):  # said once in evaluate
            estimates = {k: e for k, e in estimates.items() if e.loss is None or bool(torch.isfinite(e.loss))}
        needs_labels = measure.needs(Requirement.LABELS)
        scored = slot.cap is None or slot.cap > TRIAL_SAMPLES  # a timing run on a few samples is logged, not scored
        actual_loss, actual_error = float(actual["loss"]), float(actual["error"])
        for name, estimate in estimates.items():
            logs.update(
                report.score(
                    group + name, estimate, actual_loss, actual_error, needs_labels=needs_labels, scored=scored
                )
            )
        return logs

    def _applicable(self, measures: Sequence[Measure[Any]], explicit: bool) -> list[Measure[Any]]:
        chosen = []
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
        return Slot(measure, settings, keys)

    def _guard(self, slot: Slot, action: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one step of a measure; if it raises, switch the measure off for the rest of the fit with one warning
        (said once the ranks agreed, :meth:`agree`). Out of CUDA memory, the cache is emptied too."""
        if slot.failed:
            return None
        start = synchronized_time(self._device)
        out_of_memory = False
        try:
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
            slot.seconds += synchronized_time(self._device) - start

    def _announce(self, slot: Slot) -> None:
        """Say why ``slot`` was switched off, prefixed by this rank under DDP (any rank may be the one to say it)."""
        message = f"{self.owner}: {slot.error} — it is switched off for the rest of this fit; training goes on."
        slot.error = None
        if self.rank is None:
            rank_zero_warn(message)
        else:
            warnings.warn(rank_prefixed_message(message, self.rank), UserWarning, stacklevel=2)

    def _switch_off(self, slot: Slot) -> None:
        """For the rest of the fit; its Metrics' memory is freed."""
        slot.failed, slot.metrics = True, {}

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

    def _losses(self, split: str) -> dict[str, Tensor]:
        """A split's loss and error over every rank, NaN where no rank scored a labelled sample, or a pool's
        labels could not be scored."""
        assert self._agreed is not None
        metric = self.split_loss[split]
        if self._agreed.labelled[split] and not self._agreed.problems.get(split):
            with warnings.catch_warnings():  # a rank that scored none still syncs
                warnings.filterwarnings("ignore", message=".*before the ``update`` method")
                return metric.compute()
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=metric.count.device)
        return {"loss": nan, "error": nan}


def _label_problem(logits: Tensor, y: Tensor) -> str | None:
    """What keeps a pool's labels from scoring class logits [B, K] (a key of :data:`POOL_PROBLEMS`), or None."""
    if logits.ndim != 2 or logits.shape[1] < 2 or y.is_floating_point():
        return None  # any other scoring is the loss's to refuse
    if y.shape != logits.shape[:1] or y.dtype == torch.bool or y.is_complex():
        return "labels"
    low, high = torch.aminmax(y)  # an index out of range is a device-side assert on CUDA: never hand it over
    return "range" if int(low) < 0 or int(high) >= logits.shape[1] else None


def _no_labels(measure: Measure[Any], split: str) -> None:
    raise ValueError(f"{measure.name} needs labels, but a {split} batch carries none.")
