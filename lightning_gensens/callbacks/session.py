"""One fit's measuring: the measures defined for the model, their Metrics per split, fault isolation, and turning
computed Metrics into logged values and scored predictions."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torchmetrics import Metric

from lightning_gensens.callbacks.budget import Need
from lightning_gensens.callbacks.reporting import Report
from lightning_gensens.capture import Captured
from lightning_gensens.measures import Measure, Reference, Requirement, Settings
from lightning_gensens.measures.base import SPLITS, WEIGHTS
from lightning_gensens.metrics.split_loss import SplitLoss
from lightning_gensens.replay import Replay
from lightning_gensens.utilities import evaluation_mode, synchronized_time


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

    @property
    def runs(self) -> bool:
        return not self.failed and self.cap != 0

    def wants(self, split: str) -> bool:
        return split in self.keys and self.runs and (self.cap is None or self.fed.get(split, 0) < self.cap)


class Session:
    """The measures of one fit on ``net``, fed from captured forward passes split by split.

    Applicability is checked in eval mode, the state measuring runs in. A measure that raises while measuring is
    switched off for the rest of the fit with one warning (``strict`` re-raises).
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
    ) -> None:
        self.owner, self.net, self.defaults, self.strict, self.replay = owner, net, defaults, strict, replay
        self.explicit = explicit
        self.pools = [f"pool/{name}" for name in pools]
        self.recommend = dict(recommend or {})
        self._unavailable: set[str] = set()
        self._warned_unlabeled_probe = False
        self.slots = [self._slot(m) for m in self._applicable(measures, explicit)]
        self.split_loss = {split: SplitLoss(defaults.loss_fn) for split in (*SPLITS, *self.pools)}
        self.example: Captured | None = None
        self._seen: dict[str, int] = {}
        self._sizes: dict[str, int] = {}
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
        """Whether ``split`` was fed this run."""
        return self._seen.get(split, 0) > 0

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
        """This run's seconds and samples of every measure that ran."""
        ran = [slot for slot in self.slots if slot.runs and (slot.seconds > 0 or slot.fed)]
        seconds = {slot.measure.name: slot.seconds for slot in ran}
        return seconds, {slot.measure.name: sum(slot.fed.values()) or 1 for slot in ran}

    def reset(self) -> None:
        self.example = None
        if self._seen:
            self._sizes = dict(self._seen)
        self._seen = {}
        for slot in self.slots:
            slot.seconds, slot.fed = 0.0, {}
        self.replay.clear()
        for metric in self.metrics():
            if metric.update_count:  # a Metric never updated holds its defaults already
                metric.reset()

    def feed(self, split: str, record: Captured) -> None:
        """Update the split's loss and every data measure with one forward pass. A pool's labels only score its
        loss: its measures never see them."""
        if not self._outputs_checked:
            self._check_outputs(record)
        if self.example is None:
            self.example = record
        elif record.x.shape[1:] != self.example.x.shape[1:]:
            raise ValueError(
                f"the {split} batches have inputs of shape {tuple(record.x.shape[1:])}, but the model was measured on "
                f"inputs of shape {tuple(self.example.x.shape[1:])}."
            )
        self._seen[split] = self._seen.get(split, 0) + record.logits.shape[0]
        if record.y is not None:
            self.split_loss[split].update(record.logits, record.y)
        if split in self.pools:
            record.y = None
        call = record.call
        if call is not None and not (call.plain and call.input.is_floating_point()):
            self.replay.remember(record.x, call)  # for the measures that compute at the end of the run
        # the math kernel of attention: the double backward curvature needs exists for it (on CPU, not the others)
        with sdpa_kernel(SDPBackend.MATH):
            for slot in self.slots:
                if not slot.wants(split):
                    continue
                fed, size = slot.fed.get(split, 0), record.logits.shape[0]
                part = record if slot.cap is None or fed + size <= slot.cap else record.head(slot.cap - fed)
                slot.fed[split] = fed + part.logits.shape[0]
                if slot.measure.needs(Requirement.LABELS) and record.y is None:
                    self._guard(slot, "reading labels", _no_labels, slot.measure, split)
                with self.replay.replaying(part.call):
                    metric = slot.metrics[split]
                    self._guard(slot, f"updating on {split} data", slot.measure.update, metric, part, self.net)

    def evaluate(self, prefix: str, shared_prefix: str, report: Report) -> dict[str, Tensor]:
        """Compute every measure, log its values, and score its predictions against the actual test loss; for each
        pool, predict its loss from the validation data where there was a validation run, else from the probe."""
        assert self.example is not None
        losses = {split: _losses(metric) for split, metric in self.split_loss.items()}
        logs: dict[str, Tensor] = {}
        for split, name in (("train", "train"), ("val", "test"), *((pool, f"{pool}/test") for pool in self.pools)):
            logs[f"{shared_prefix}/{name}_loss"] = losses[split]["loss"]
            logs[f"{shared_prefix}/{name}_error"] = losses[split]["error"]
        logs = {k: v for k, v in logs.items() if bool(torch.isfinite(v))}  # absent labels: nothing, not NaN
        train = losses["train"]
        if not bool(torch.isfinite(train["loss"])) and not self._warned_unlabeled_probe:
            self._warned_unlabeled_probe = True
            rank_zero_warn(
                f"{self.owner}: the training probe's batches carry no labels, so there is no train loss for the "
                "estimators to scale: measures are logged, predicted test losses only where they need no train loss."
            )
        outputs = self.example.logits[0].numel()
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
        """Each measured pool's ``pred_test_<kind>``: the recommended estimator's prediction (one warning per kind
        while it gives none)."""
        out = {}
        for kind, estimator in self.recommend.items():
            for pool in (p for p in self.pools if self.seen(p)):
                key = f"{prefix}/{pool}/{estimator}/pred_test_{kind}"
                if key in logs:
                    out[f"{shared_prefix}/{pool}/pred_test_{kind}"] = logs[key]
                elif kind not in self._unavailable:
                    self._unavailable.add(kind)
                    rank_zero_warn(
                        f"{self.owner}: the recommended {kind} estimator {estimator!r} predicted nothing for {pool} "
                        f"this run, so {shared_prefix}/{pool}/pred_test_{kind} is not logged (is its measure running, "
                        "and does the reference carry labels?)."
                    )
        return out

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
            if not all(slot.fed.get(split) for split in (ref, target)):
                return {}  # a split this measure was not fed (its share of samples ran out, or it has none)
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
        actual_loss, actual_error = float(actual["loss"]), float(actual["error"])
        for name, estimate in estimates.items():
            logs.update(report.score(group + name, estimate, actual_loss, actual_error, needs_labels=needs_labels))
        return logs

    def _applicable(self, measures: Sequence[Measure[Any]], explicit: bool) -> list[Measure[Any]]:
        chosen = []
        with evaluation_mode(self.net):
            for m in measures:
                problem = m.check(self.net)
                if problem is None:
                    chosen.append(m)
                elif explicit:
                    raise ValueError(problem)
                else:
                    rank_zero_info(f"{self.owner}: skipping {m.name}: {problem}")
        return chosen

    def _slot(self, measure: Measure[Any]) -> Slot:
        settings = measure.settings(self.defaults)
        if measure.needs(Requirement.WEIGHT_ONLY):
            keys: Sequence[str] = (WEIGHTS,)
        else:  # a pool's labels never reach a measure, so label-needing measures do not predict for pools
            keys = SPLITS if measure.needs(Requirement.LABELS) else (*SPLITS, *self.pools)
        return Slot(measure, settings, keys)

    def _guard(self, slot: Slot, action: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one step of a measure; if it raises, switch the measure off for the rest of the fit (one warning)."""
        if slot.failed:
            return None
        start = synchronized_time(self._device)
        try:
            return fn(*args)
        except Exception as err:
            if self.strict:
                raise
            slot.failed = True
            rank_zero_warn(
                f"{self.owner}: {slot.measure.name} raised {type(err).__name__} while {action}: {err} — it is "
                "switched off for the rest of this fit; training goes on."
            )
            return None
        finally:
            slot.seconds += synchronized_time(self._device) - start

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
        slot.failed = True
        (rank_zero_warn if self.explicit else rank_zero_info)(message)


def _losses(metric: SplitLoss) -> dict[str, Tensor]:
    """A split's loss and error, NaN where it saw no labelled batch."""
    if metric.update_count:
        return metric.compute()
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=metric.count.device)
    return {"loss": nan, "error": nan}


def _no_labels(measure: Measure[Any], split: str) -> None:
    raise ValueError(f"{measure.name} needs labels, but a {split} batch carries none.")
