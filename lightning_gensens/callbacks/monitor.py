"""GeneralizationMonitor: the one orchestrator. It captures the model's validation forward passes, evaluates a
training probe, feeds every measure's Metrics, and logs actual beside predicted test loss."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torchmetrics import Metric

from lightning_gensens.batches import BatchToXY, default_batch_to_xy
from lightning_gensens.callbacks.probe import TrainingProbe
from lightning_gensens.callbacks.progress import EpochEndProgress
from lightning_gensens.callbacks.reporting import Report
from lightning_gensens.capture import Captured, ForwardCapture, OutputFn, exclusive
from lightning_gensens.measures import MEASURES, LossFn, Measure, Reference, Requirement, Settings
from lightning_gensens.measures.base import SPLITS, WEIGHTS
from lightning_gensens.metrics.split_loss import SplitLoss
from lightning_gensens.utilities import evaluation_mode, preserved_rng, weight_layers


@dataclass
class _Slot:
    """A measure during one fit: its resolved settings, its Metrics, and whether it was switched off."""

    measure: Measure
    settings: Settings
    metrics: dict[str, Metric]
    failed: bool = False


class GeneralizationMonitor(Callback):
    """Logs, every validation run, each measure's value on a training probe and on the validation data, its
    predicted test loss and error, the actual ones, and every estimator's running MAE; at the end of fit, the MAE
    table. Measuring runs in eval mode, restores every module's mode and the global RNG state, never fills
    ``.grad``, and a measure that raises is switched off with one warning while training goes on.

    Args:
        measures: names (see ``lightning_gensens.measures.MEASURES``), :class:`~lightning_gensens.measures.Measure`
            instances or single-measure callbacks. ``None`` runs every registered measure defined for the model
            and skips the others with one info line; a measure named explicitly that is not defined raises.
        probe_size: training samples in the probe (drawn once per fit with ``seed``, sharded over ranks).
        probe_batch_size: batch size of the probe's forward passes.
        probe: a Dataset or DataLoader to draw the probe from instead of the training loader.
        every_n_epochs: measure every n-th epoch.
        seed: seed of the probe and of each measure's noise (a measure's own ``seed`` wins).
        batch_to_xy: maps a batch to ``(x, y)`` (``y`` may be None); the default reads tensors, tuples, lists and
            mappings with common key names.
        loss_fn: mean-reduced ``loss_fn(logits, y)``, cross-entropy by default (a measure's own ``loss_fn`` wins).
        output_fn: maps the model's output to its logits (default: a tensor, a tuple's first element, ``logits``).
        module: name of the submodule to measure (``pl_module.get_submodule``); the LightningModule by default.
        prefix: prefix of every logged key.
        unlabeled: batches without labels (or the datamodule's ``unlabeled_dataloader()``) on which the
            label-free measures are evaluated in place of the validation data; label-needing measures are then
            skipped. The actual test loss still comes from the validation labels where present.
        strict: re-raise a measure's error instead of switching the measure off (for tests and debugging).
    """

    def __init__(
        self,
        measures: Sequence[str | Measure | Callback] | None = None,
        *,
        probe_size: int = 2048,
        probe_batch_size: int = 256,
        probe: Any = None,
        every_n_epochs: int = 1,
        seed: int = 0,
        batch_to_xy: BatchToXY | None = None,
        loss_fn: LossFn | None = None,
        output_fn: OutputFn | None = None,
        module: str | None = None,
        prefix: str = "gensens",
        unlabeled: Iterable[Any] | None = None,
        strict: bool = False,
    ) -> None:
        for arg, value in (
            ("probe_size", probe_size),
            ("probe_batch_size", probe_batch_size),
            ("every_n_epochs", every_n_epochs),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{arg} must be a positive integer, got {value!r}.")
        self.every_n_epochs, self.seed, self.module, self.prefix = every_n_epochs, seed, module, prefix
        self.unlabeled, self.strict, self.output_fn = unlabeled, strict, output_fn
        self.batch_to_xy = batch_to_xy or default_batch_to_xy
        self.defaults = Settings(seed=seed, loss_fn=loss_fn or F.cross_entropy)
        self.probe = TrainingProbe(probe_size, probe_batch_size, seed, self.batch_to_xy, probe)
        self.explicit = measures is not None
        self.measures = _resolve(measures)
        self.report = Report(prefix)
        self.mae_table: list[dict[str, Any]] = []
        self._slots: list[_Slot] = []
        self._capture: ForwardCapture | None = None
        self._active = False

    # -- configuration ----------------------------------------------------------------------------------------
    @property
    def state_key(self) -> str:
        # the user's configuration only: a release adding a default measure must not orphan checkpoints
        if self.explicit:
            return self._generate_state_key(prefix=self.prefix, measures=tuple(m.name for m in self.measures))
        return self._generate_state_key(prefix=self.prefix)

    @property
    def shared_prefix(self) -> str:
        """Prefix of the keys every measure shares (``test_loss``, ``train_loss``, …)."""
        return self.prefix

    @property
    def history(self) -> list[dict[str, float]]:
        """Every logged scalar per measured run, with ``epoch``."""
        return self.report.history

    @property
    def active_measures(self) -> list[Measure]:
        """The measures running in the current fit (defined for the model and not switched off)."""
        return [slot.measure for slot in self._slots if not slot.failed]

    def _namespaces(self) -> set[str]:
        return {self.shared_prefix} | {f"{self.prefix}/{m.name}" for m in self.measures}

    # -- Lightning hooks --------------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        for other in trainer.callbacks:  # type: ignore[attr-defined]
            if other is not self and isinstance(other, GeneralizationMonitor):
                shared = self._namespaces() & other._namespaces()
                if shared:
                    raise ValueError(
                        f"{type(self).__name__} and {type(other).__name__} would both log under {sorted(shared)}: "
                        "give one of them another `prefix=`."
                    )
        net = pl_module if self.module is None else pl_module.get_submodule(self.module)
        self._net: nn.Module = getattr(net, "_orig_mod", net)  # torch.compile: measure the original module
        weight_layers(self._net)
        datamodule = getattr(trainer, "datamodule", None)
        self._unlabeled = self.unlabeled
        if self._unlabeled is None and hasattr(datamodule, "unlabeled_dataloader"):
            self._unlabeled = datamodule.unlabeled_dataloader()
        self._slots = [self._slot(m) for m in self._applicable()]
        self._capture = ForwardCapture(
            self._net,
            preactivations=any(s.measure.needs(Requirement.PREACTIVATIONS) for s in self._slots),
            measure=self.prefix,
            output_fn=self.output_fn,
        ).attach()
        self._split_loss = {split: SplitLoss(self.defaults.loss_fn) for split in SPLITS}
        self._outputs_checked = False
        self.probe.reset()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._capture is not None:
            self._capture.detach()
            self._capture = None

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._active = (
            self._capture is not None
            and not trainer.sanity_checking
            and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        )
        if not self._active or self._capture is None:
            return
        for metric in self._metrics():
            metric.to(pl_module.device)
        self._example: Captured | None = None
        self._capture.clear()
        self._capture.enabled = True

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._active or self._capture is None:
            return
        record = self._capture.pop()
        if record is None or dataloader_idx != 0:
            return
        record.y = self.batch_to_xy(batch)[1]
        if record.y is not None and record.y.shape[0] != record.logits.shape[0]:
            raise ValueError(
                f"the validation batch has {record.y.shape[0]} labels but the model's last forward call saw "
                f"{record.logits.shape[0]} samples; pass `batch_to_xy=` or `module=` to match them."
            )
        self._feed("val", record, measures=self._unlabeled is None)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._capture is not None:
            self._capture.enabled = False
        if not self._active:
            return
        self._active = False
        if self._example is None:
            raise RuntimeError(
                f"{type(self).__name__} saw no forward call of {type(self._net).__name__} during validation: "
                "call the model as self(x) in validation_step, or pass `module=` naming the submodule to measure."
            )
        if not all(bool(torch.isfinite(p).all()) for p in self._net.parameters()):
            rank_zero_warn(f"{type(self).__name__}: the model has NaN/Inf weights; nothing measured this epoch.")
        else:
            with preserved_rng(), evaluation_mode(self._net):
                logs = self._measure(trainer, pl_module)
            self.report.record(trainer.current_epoch, logs)
            self.report.define_wandb_step(trainer, logs)
            pl_module.log_dict(logs, sync_dist=trainer.world_size > 1)
        for metric in self._metrics():
            metric.reset()

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.mae_table = self.report.publish(trainer, type(self).__name__)

    def state_dict(self) -> dict[str, Any]:
        return {"report": self.report.state_dict(), "measures": {m.name: m.state_dict() for m in self.measures}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.report.load_state_dict(state_dict.get("report", {}))
        for m in self.measures:
            m.load_state_dict(state_dict.get("measures", {}).get(m.name, {}))

    # -- internals --------------------------------------------------------------------------------------------
    def _applicable(self) -> list[Measure]:
        """The configured measures defined for the model (checked in eval mode, the state measuring runs in)."""
        chosen = []
        with evaluation_mode(self._net):
            for m in self.measures:
                problem = m.check(self._net)
                if problem is None and m.needs(Requirement.LABELS) and self._unlabeled is not None:
                    problem = f"{m.name} needs labels, so it cannot predict from the unlabeled data."
                if problem is None:
                    chosen.append(m)
                elif self.explicit:
                    raise ValueError(problem)
                else:
                    rank_zero_info(f"{type(self).__name__}: skipping {m.name}: {problem}")
        return chosen

    def _slot(self, measure: Measure) -> _Slot:
        settings = measure.settings(self.defaults)
        keys = (WEIGHTS,) if measure.needs(Requirement.WEIGHT_ONLY) else SPLITS
        return _Slot(measure, settings, {key: measure.make_metric(self._net, settings) for key in keys})

    def _metrics(self) -> list[Metric]:
        return [*self._split_loss.values(), *(m for s in self._slots for m in s.metrics.values())]

    def _guard(self, slot: _Slot, action: str, fn: Callable[..., Any], *args: Any) -> Any:
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
                f"{type(self).__name__}: {slot.measure.name} raised {type(err).__name__} while {action}: {err} — it "
                "is switched off for the rest of this fit; training goes on."
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
        for slot in self._slots:
            if regression and slot.measure.needs(Requirement.CLASS_LOGITS) and not slot.failed:
                slot.failed = True
                rank_zero_info(f"{type(self).__name__}: skipping {slot.measure.name}: it needs class logits [B, K].")

    def _feed(self, split: str, record: Captured, measures: bool = True) -> None:
        if not self._outputs_checked:
            self._check_outputs(record)
        if self._example is None:
            self._example = record
        if record.y is not None:
            self._split_loss[split].update(record.logits, record.y)
        for slot in self._slots if measures else ():
            if slot.measure.needs(Requirement.WEIGHT_ONLY):
                continue
            if slot.measure.needs(Requirement.LABELS) and record.y is None:
                self._guard(slot, "reading labels", _no_labels, slot.measure, split)
            self._guard(slot, f"updating on {split} data", slot.measure.update, slot.metrics[split], record, self._net)

    def _measure(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Tensor]:
        assert self._capture is not None and self._example is not None
        batches = self.probe.get(trainer)
        progress = EpochEndProgress(trainer, len(batches) + len(self._slots))
        try:
            with exclusive(self._capture):
                self._capture.enabled = True
                for x, y in batches:
                    self._net(x.to(pl_module.device))
                    record = self._capture.pop()
                    if record is not None:
                        record.y = None if y is None else y.to(pl_module.device)
                        self._feed("train", record)
                    progress.advance()
                for i, batch in enumerate(self._unlabeled or ()):
                    if i % trainer.world_size == trainer.global_rank:
                        self._net(self.batch_to_xy(batch)[0].to(pl_module.device))
                        record = self._capture.pop()
                        if record is not None:
                            self._feed("val", record)
                self._capture.enabled = False
            with exclusive(None):
                return self._evaluate(progress)
        finally:
            self._capture.enabled = False
            progress.close()

    def _evaluate(self, progress: EpochEndProgress) -> dict[str, Tensor]:
        assert self._example is not None
        p = self.shared_prefix
        train, val = (self._split_loss[s].compute() for s in SPLITS)
        logs = {
            f"{p}/train_loss": train["loss"],
            f"{p}/test_loss": val["loss"],
            f"{p}/train_error": train["error"],
            f"{p}/test_error": val["error"],
        }
        logs = {k: v for k, v in logs.items() if bool(torch.isfinite(v))}  # absent labels: nothing, not NaN
        reference = Reference(train["loss"], train["error"], num_outputs=self._example.logits[0].numel())
        for slot in self._slots:
            if slot.measure.needs(Requirement.WEIGHT_ONLY):
                self._guard(
                    slot, "reading the weights", slot.measure.update, slot.metrics[WEIGHTS], self._example, self._net
                )
            computed = self._guard(slot, "computing", slot.measure.compute, slot.metrics, self._net, slot.settings)
            if computed is not None:
                values = self._guard(slot, "reporting", slot.measure.values, computed) or {}
                logs.update({f"{self.prefix}/{slot.measure.name}/{k}": v for k, v in values.items()})
                estimates = self._guard(slot, "estimating", slot.measure.estimate, computed, reference) or {}
                for name, estimate in estimates.items():
                    logs.update(self.report.score(name, estimate, float(val["loss"]), float(val["error"])))
            progress.advance()
        return logs


def _no_labels(measure: Measure, split: str) -> None:
    raise ValueError(f"{measure.name} needs labels, but a {split} batch carries none.")


def _resolve(measures: Sequence[str | Measure | Callback] | None) -> list[Measure]:
    """Measures from names, instances or single-measure callbacks; each at most once."""
    resolved: list[Measure] = []
    for m in list(MEASURES) if measures is None else measures:
        if isinstance(m, str):
            if m not in MEASURES:
                raise ValueError(f"unknown measure {m!r}; available: {sorted(MEASURES)}.")
            resolved.append(MEASURES[m]())
        elif isinstance(m, Measure):
            resolved.append(m)
        elif isinstance(m, GeneralizationMonitor) and len(m.measures) == 1 and hasattr(m, "monitor_settings"):
            if m.monitor_settings:
                raise ValueError(
                    f"{sorted(m.monitor_settings)} of {type(m).__name__} are settings of a monitor, which "
                    "GeneralizationMonitor would ignore: set them on GeneralizationMonitor instead."
                )
            resolved.append(m.measures[0])
        else:
            raise TypeError(f"measures must be names, Measure instances or measure callbacks, got {type(m).__name__}.")
    names = [m.name for m in resolved]
    if len(set(names)) != len(names):
        raise ValueError(f"each measure may be given once, got {names}.")
    return resolved
