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
        *,
        explicit: bool,
        unlabeled: bool,
        strict: bool,
    ) -> None:
        self.owner, self.net, self.defaults, self.strict = owner, net, defaults, strict
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
        for slot in self.slots if measures else ():
            if slot.measure.needs(Requirement.WEIGHT_ONLY):
                continue
            if slot.measure.needs(Requirement.LABELS) and record.y is None:
                self._guard(slot, "reading labels", _no_labels, slot.measure, split)
            self._guard(slot, f"updating on {split} data", slot.measure.update, slot.metrics[split], record, self.net)

    def evaluate(self, prefix: str, shared_prefix: str, report: Report) -> dict[str, Tensor]:
        """Compute every measure, log its values, and score its predictions against the actual test loss."""
        assert self.example is not None
        train, val = (self.split_loss[s].compute() for s in SPLITS)
        logs = {
            f"{shared_prefix}/train_loss": train["loss"],
            f"{shared_prefix}/test_loss": val["loss"],
            f"{shared_prefix}/train_error": train["error"],
            f"{shared_prefix}/test_error": val["error"],
        }
        logs = {k: v for k, v in logs.items() if bool(torch.isfinite(v))}  # absent labels: nothing, not NaN
        reference = Reference(train["loss"], train["error"], num_outputs=self.example.logits[0].numel())
        for slot in self.slots:
            measure = slot.measure
            if measure.needs(Requirement.WEIGHT_ONLY):
                self._guard(slot, "reading the weights", measure.update, slot.metrics[WEIGHTS], self.example, self.net)
            computed = self._guard(slot, "computing", measure.compute, slot.metrics, self.net, slot.settings)
            if computed is None:
                continue
            values = self._guard(slot, "reporting", measure.values, computed) or {}
            logs.update({f"{prefix}/{measure.name}/{k}": v.double() for k, v in values.items()})
            estimates = self._guard(slot, "estimating", measure.estimate, computed, reference) or {}
            for name, estimate in estimates.items():
                logs.update(report.score(name, estimate, float(val["loss"]), float(val["error"])))
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
            if regression and slot.measure.needs(Requirement.CLASS_LOGITS) and not slot.failed:
                slot.failed = True
                rank_zero_info(f"{self.owner}: skipping {slot.measure.name}: it needs class logits [B, K].")


def _no_labels(measure: Measure[Any], split: str) -> None:
    raise ValueError(f"{measure.name} needs labels, but a {split} batch carries none.")
