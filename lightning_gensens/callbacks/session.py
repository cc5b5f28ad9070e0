"""One fit's measuring: the measures defined for the model, their Metrics per split, fault isolation, and turning
computed Metrics into logged values and scored predictions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torchmetrics import Metric

from lightning_gensens.callbacks.reporting import Report
from lightning_gensens.capture import Captured
from lightning_gensens.measures import Measure, Reference, Requirement, Settings
from lightning_gensens.measures.base import SPLITS, WEIGHTS
from lightning_gensens.metrics.split_loss import SplitLoss
from lightning_gensens.replay import Replay
from lightning_gensens.utilities import evaluation_mode


@dataclass
class Slot:
    """A measure during one fit: its resolved settings, its Metrics, and whether it was switched off."""

    measure: Measure[Any]
    settings: Settings
    metrics: dict[str, Metric]
    failed: bool = False


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
        explicit: bool,
        unlabeled: bool,
        strict: bool,
    ) -> None:
        self.owner, self.net, self.defaults, self.strict, self.replay = owner, net, defaults, strict, replay
        self.explicit = explicit
        self._warned_unlabeled_probe = False
        self.slots = [self._slot(m) for m in self._applicable(measures, explicit, unlabeled)]
        self.split_loss = {split: SplitLoss(defaults.loss_fn) for split in SPLITS}
        self.example: Captured | None = None
        self._outputs_checked = False

    def needs(self, requirement: Requirement) -> bool:
        return any(slot.measure.needs(requirement) for slot in self.slots)

    @property
    def active(self) -> list[Measure[Any]]:
        return [slot.measure for slot in self.slots if not slot.failed]

    def metrics(self) -> list[Metric]:
        return [*self.split_loss.values(), *(m for s in self.slots for m in s.metrics.values())]

    def reset(self) -> None:
        self.example = None
        self.replay.clear()
        for metric in self.metrics():
            metric.reset()

    def feed(self, split: str, record: Captured, measures: bool = True) -> None:
        """Update the split's loss and, unless ``measures`` is False, every data measure with one forward pass."""
        if not self._outputs_checked:
            self._check_outputs(record)
        if self.example is None:
            self.example = record
        if record.y is not None:
            self.split_loss[split].update(record.logits, record.y)
        if not measures:
            return
        call = record.call
        if call is not None and not (call.plain and call.input.is_floating_point()):
            self.replay.remember(record.x, call)  # for the measures that compute at the end of the run
        with self.replay.replaying(call):
            for slot in self.slots:
                if slot.measure.needs(Requirement.WEIGHT_ONLY):
                    continue
                if slot.measure.needs(Requirement.LABELS) and record.y is None:
                    self._guard(slot, "reading labels", _no_labels, slot.measure, split)
                self._guard(
                    slot, f"updating on {split} data", slot.measure.update, slot.metrics[split], record, self.net
                )

    def evaluate(self, prefix: str, shared_prefix: str, report: Report) -> dict[str, Tensor]:
        """Compute every measure, log its values, and score its predictions against the actual test loss."""
        assert self.example is not None
        train, val = (_losses(self.split_loss[s]) for s in SPLITS)
        logs = {
            f"{shared_prefix}/train_loss": train["loss"],
            f"{shared_prefix}/test_loss": val["loss"],
            f"{shared_prefix}/train_error": train["error"],
            f"{shared_prefix}/test_error": val["error"],
        }
        logs = {k: v for k, v in logs.items() if bool(torch.isfinite(v))}  # absent labels: nothing, not NaN
        reference = Reference(train["loss"], train["error"], num_outputs=self.example.logits[0].numel())
        if not bool(torch.isfinite(reference.loss)) and not self._warned_unlabeled_probe:
            self._warned_unlabeled_probe = True
            rank_zero_warn(
                f"{self.owner}: the training probe's batches carry no labels, so there is no train loss for the "
                "estimators to scale: measures are logged, predicted test losses only where they need no train loss."
            )
        with self.replay.replaying():
            for slot in self.slots:
                logs.update(self._evaluate(slot, reference, val, prefix, report))
        return logs

    def _evaluate(
        self, slot: Slot, reference: Reference, val: dict[str, Tensor], prefix: str, report: Report
    ) -> dict[str, Tensor]:
        """One measure's logged values and scored predictions."""
        measure, example = slot.measure, self.example
        if measure.needs(Requirement.WEIGHT_ONLY):
            self._guard(slot, "reading the weights", measure.update, slot.metrics[WEIGHTS], example, self.net)
        computed = self._guard(slot, "computing", measure.compute, slot.metrics, self.net, slot.settings)
        if computed is None:
            return {}
        values = self._guard(slot, "reporting", measure.values, computed) or {}
        logs = {f"{prefix}/{measure.name}/{k}": v.double() for k, v in values.items()}
        estimates = self._guard(slot, "estimating", measure.estimate, computed, reference) or {}
        if not bool(torch.isfinite(reference.loss)):  # said once in evaluate
            estimates = {k: e for k, e in estimates.items() if bool(torch.isfinite(e.loss))}
        needs_labels = measure.needs(Requirement.LABELS)
        for name, estimate in estimates.items():
            actual_loss, actual_error = float(val["loss"]), float(val["error"])
            logs.update(report.score(name, estimate, actual_loss, actual_error, needs_labels=needs_labels))
        return logs

    def _applicable(self, measures: Sequence[Measure[Any]], explicit: bool, unlabeled: bool) -> list[Measure[Any]]:
        chosen = []
        with evaluation_mode(self.net):
            for m in measures:
                problem = m.check(self.net)
                if problem is None and m.needs(Requirement.LABELS) and unlabeled:
                    problem = f"{m.name} needs labels, so it cannot predict from the unlabeled data."
                if problem is None:
                    chosen.append(m)
                elif explicit:
                    raise ValueError(problem)
                else:
                    rank_zero_info(f"{self.owner}: skipping {m.name}: {problem}")
        return chosen

    def _slot(self, measure: Measure[Any]) -> Slot:
        settings = measure.settings(self.defaults)
        keys = (WEIGHTS,) if measure.needs(Requirement.WEIGHT_ONLY) else SPLITS
        return Slot(measure, settings, {key: measure.make_metric(self.net, settings) for key in keys})

    def _guard(self, slot: Slot, action: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one step of a measure; if it raises, switch the measure off for the rest of the fit (one warning)."""
        if slot.failed:
            return None
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

    def _check_outputs(self, record: Captured) -> None:
        """At the first record: refuse a classification loss on outputs it cannot score, and skip the measures
        that need class logits on other outputs."""
        self._outputs_checked = True
        logits, y = record.logits, record.y
        regression = logits.ndim != 2 or logits.shape[1] < 2 or (y is not None and y.is_floating_point())
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
