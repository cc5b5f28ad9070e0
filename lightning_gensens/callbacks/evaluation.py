"""The second half of a run: the ranks' agreement on what to compute after feeding, and turning the computed Metrics
into logged values and scored predictions (keys from :class:`~lightning_gensens.callbacks.keys.Keys`)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lightning_gensens.callbacks.budget import TRIAL_SAMPLES
from lightning_gensens.callbacks.keys import Keys, predicted
from lightning_gensens.callbacks.reporting import Report
from lightning_gensens.callbacks.slots import POOL_PROBLEMS, Agreement, Slot
from lightning_gensens.capture import Captured
from lightning_gensens.measures import Reference, Requirement
from lightning_gensens.measures.base import WEIGHTS
from lightning_gensens.metrics.split_loss import SplitLoss
from lightning_gensens.replay import Replay


class Evaluation:
    """What a :class:`~lightning_gensens.callbacks.session.Session` does once a run's batches are fed: :meth:`agree`
    across ranks, then :meth:`evaluate`. The session provides the state and the guard."""

    owner: str
    rank: int | None
    slots: list[Slot]
    pools: list[str]
    recommend: dict[str, dict[str, str]]
    split_loss: dict[str, SplitLoss]
    example: Captured | None
    net: nn.Module
    replay: Replay
    _agreed: Agreement | None
    _seen: dict[str, int]
    _problems: dict[str, set[str]]
    _device: torch.device | None
    _warned: set[tuple[str, str]]
    _recommended_logged: set[tuple[str, str]]
    _pools_measured: set[str]
    _warned_unlabeled_probe: bool
    _reset: bool

    def _guard(self, slot: Slot, action: str, fn: Callable[..., Any], *args: Any) -> Any:
        raise NotImplementedError

    def _announce(self, slot: Slot) -> None:
        raise NotImplementedError

    def _switch_off(self, slot: Slot) -> None:
        raise NotImplementedError

    def seen(self, split: str) -> bool:
        """Whether ``split`` was fed this run on some rank, and is measured (once the ranks agreed)."""
        assert self._agreed is not None
        return self._agreed.seen[split] > 0 and "inputs" not in self._agreed.problems.get(split, ())

    def agree(self, gather: Callable[[Tensor], Tensor] | None = None) -> None:
        """After feeding, make this run the same on every rank before the collectives of :meth:`evaluate`, with one
        gather (``gather``: the strategy's ``all_gather``; None in one process) of each measure's flags and samples
        fed and each split's counts and problems. A measure that failed on any rank is switched off on all (the
        lowest failing rank says why), one some rank was not fed on a split is not computed on it, a split is scored
        where some rank scored labelled samples, and each pool's problems are said once per fit."""
        self._reset = False
        local = list(self._local_view())
        rows = [local]  # one process: the table is read in Python, with no tensor op per value
        if gather is not None:
            table = gather(torch.tensor(local, dtype=torch.float64, device=self._device))
            rows = table.reshape(-1, len(local)).tolist()
        columns = zip(*rows, strict=True)  # one column per value, one entry per rank
        for slot in self.slots:
            failed = next(columns)
            fed = {key: next(columns) for key in slot.keys}
            slot.agreed = {key: int(min(n)) for key, n in fed.items()}
            slot.ran = slot.measure.needs(Requirement.WEIGHT_ONLY) or any(any(n) for n in fed.values())
            if any(failed):
                if slot.error is not None and self.rank in (None, next(r for r, f in enumerate(failed) if f)):
                    self._announce(slot)
                slot.error = None
                self._switch_off(slot)
        seen = {split: int(sum(next(columns))) for split in self.split_loss}
        labelled = {split: int(sum(next(columns))) for split in self.split_loss}
        problems = {pool: {p for p in POOL_PROBLEMS if any(next(columns))} for pool in self.pools}
        outputs = next(columns)  # 0 on a rank that saw no forward pass: then nothing is evaluated
        self._agreed = Agreement(seen, labelled, problems, int(min(outputs)) and int(max(outputs)))
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

    def evaluate(self, keys: Keys, report: Report) -> dict[str, Tensor]:
        """Compute every measure, log its values, and score its predictions against the actual test loss; for each
        pool, predict its loss from the validation data where there was a validation run, else from the probe.
        Called on every rank once they agreed (:meth:`agree`)."""
        assert self._agreed is not None
        if not self._agreed.outputs:
            return {}
        losses = {split: self._losses(split) for split in self.split_loss}
        # each value read once: each read of a tensor's value is a synchronisation on CUDA
        values = {split: {kind: float(v) for kind, v in loss.items()} for split, loss in losses.items()}
        logs: dict[str, Tensor] = {}
        for split, group, name in (
            ("train", "", "train"),
            ("val", "", "test"),
            *((p, f"{p}/", "test") for p in self.pools),
        ):
            for kind in ("loss", "error"):
                if math.isfinite(values[split][kind]):  # absent labels: nothing, not NaN
                    logs[keys.shared(f"{name}_{kind}", group)] = losses[split][kind]
        unlabeled_probe = self._agreed.seen["train"] and not math.isfinite(values["train"]["loss"])
        if unlabeled_probe and not self._warned_unlabeled_probe:
            self._warned_unlabeled_probe = True
            rank_zero_warn(
                f"{self.owner}: the training probe's batches carry no labels, so there is no train loss for the "
                "estimators to scale: measures are logged, predicted test losses only where they need no train loss."
            )
        outputs = self._agreed.outputs
        pairs = [("", "train", "val")] if self.seen("val") else []
        reference = "val" if self.seen("val") and math.isfinite(values["val"]["loss"]) else "train"
        pairs += [(f"{pool}/", reference, pool) for pool in self.pools if self.seen(pool)]
        with self.replay.replaying():
            for group, ref, target in pairs:
                ref_losses = Reference(losses[ref]["loss"], losses[ref]["error"], num_outputs=outputs)
                actual = (values[target]["loss"], values[target]["error"])
                finite = math.isfinite(values[ref]["loss"])
                for slot in self.slots:
                    if not slot.runs or (not group and slot.measure.pools_only):
                        continue
                    if target in slot.keys or (not group and slot.measure.needs(Requirement.WEIGHT_ONLY)):
                        pair = (group, ref, target)
                        logs.update(self._evaluate(slot, pair, ref_losses, finite, actual, keys, report))
        logs.update(self._recommended(logs, keys, reference))
        return logs

    def _recommended(self, logs: Mapping[str, Tensor], keys: Keys, reference: str) -> dict[str, Tensor]:
        """Each measured pool's ``pred_test_<kind>``: the prediction of the estimator recommended against
        ``reference`` (the split the pools were measured against), where it gave one."""
        out = {}
        for kind, estimator in self.recommend.get(reference, {}).items():
            for pool in (p for p in self.pools if self.seen(p)):
                self._pools_measured.add(reference)
                key = keys.estimator(f"{pool}/{estimator}", predicted(kind))
                if key in logs:
                    out[keys.shared(predicted(kind), f"{pool}/")] = logs[key]
                    self._recommended_logged.add((reference, kind))
        return out

    def unlogged_recommendations(self) -> dict[str, str]:
        """The recommended estimators (per kind) that never predicted for a pool measured in this fit, against a
        reference the pools were measured against."""
        return {
            kind: estimator
            for reference in sorted(self._pools_measured, reverse=True)  # "val" first
            for kind, estimator in self.recommend[reference].items()
            if (reference, kind) not in self._recommended_logged
        }

    def _evaluate(
        self,
        slot: Slot,
        pair: tuple[str, str, str],
        reference: Reference,
        finite: bool,
        actual: tuple[float, float],
        keys: Keys,
        report: Report,
    ) -> dict[str, Tensor]:
        """One measure's values (``<prefix>/<name>/…``) and its predictions for ``target`` scored as ``group+name``
        against the ``actual`` loss and error (``pair`` = group, ref, target); the measure sees ``ref`` as its
        ``train`` split and ``target`` as its ``val`` split; ``finite``: whether the reference's loss is."""
        group, ref, target = pair
        measure = slot.measure
        if measure.needs(Requirement.WEIGHT_ONLY):
            self._guard(slot, "reading the weights", measure.update, slot.metrics[WEIGHTS], self.example, self.net)
            metrics = slot.metrics
        else:
            metrics = {"train": slot.metrics[ref], "val": slot.metrics[target]}
            if not all(slot.agreed.get(split) for split in (ref, target)):
                return {}  # a split some rank did not feed it (its share of samples ran out, or it has none)
            if measure.reads_probe and slot.agreed.get("train"):
                metrics["probe"] = slot.metrics["train"]
        computed = self._guard(slot, "computing", measure.compute, metrics, self.net, slot.settings)
        if computed is None:
            return {}
        logs: dict[str, Tensor] = {}
        if not group or measure.pools_only:  # a measure of pools only logs its values per pool
            values = self._guard(slot, "reporting", measure.values, computed) or {}
            logs = {keys.measure(group + measure.name, k): v.double() for k, v in values.items()}
        estimates = self._guard(slot, "estimating", measure.estimate, computed, reference) or {}
        if not finite:  # said once in evaluate
            estimates = {k: e for k, e in estimates.items() if e.loss is None or bool(torch.isfinite(e.loss))}
        needs_labels = measure.needs(Requirement.LABELS)
        scored = slot.cap is None or slot.cap > TRIAL_SAMPLES  # a timing run on a few samples is logged, not scored
        actual_loss, actual_error = actual
        for name, estimate in estimates.items():
            logs.update(
                report.score(
                    group + name, estimate, actual_loss, actual_error, needs_labels=needs_labels, scored=scored
                )
            )
        return logs

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
