"""GeneralizationMonitor: the one orchestrator. It captures the model's validation forward passes, evaluates a
training probe, feeds every measure's Metrics, and logs actual beside predicted test loss."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ot  # noqa: F401  the transport measure's solver loads with the callbacks, never inside a fit's timed runs
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from lightning_gensens.batches import BatchToXY, default_batch_to_xy, shard
from lightning_gensens.callbacks.budget import TRIAL_SAMPLES, Budget, Need
from lightning_gensens.callbacks.configuration import Schedule, check_namespaces, pools, recommended, resolve_measures
from lightning_gensens.callbacks.feeding import Feeder
from lightning_gensens.callbacks.hooks import RunHooks
from lightning_gensens.callbacks.probe import TrainingProbe
from lightning_gensens.callbacks.progress import EpochEndProgress
from lightning_gensens.callbacks.reporting import Report
from lightning_gensens.callbacks.session import Session
from lightning_gensens.capture import ForwardCapture, OutputFn, default_output_fn, exclusive
from lightning_gensens.measures import LossFn, Measure, Requirement, Settings
from lightning_gensens.replay import INPUT_KEYS, Replay
from lightning_gensens.utilities import evaluation_mode, preserved_rng, weight_layers


class GeneralizationMonitor(Callback):
    """Logs, every validation run, each measure's value on a training probe and on the validation data, its
    predicted test loss and error, the actual ones, and every estimator's running MAE; at the end of fit, the MAE
    table. Measuring runs in eval mode, restores every module's mode, the global RNG state and the grad mode (on any
    exception too, leaving no hook on the model), never fills ``.grad``, and a measure that raises is switched off
    with one warning (under DDP on every rank) while training goes on. Each fit starts afresh.

    Args:
        measures: names (see ``lightning_gensens.measures.MEASURES``), :class:`~lightning_gensens.measures.Measure`
            instances or single-measure callbacks. ``None`` runs every registered measure defined for the model
            and skips the others with one info line; a measure named explicitly that is not defined raises.
        probe_size: training samples in the probe (drawn once per fit with ``seed``, sharded over ranks).
        probe_batch_size: batch size of the probe's forward passes.
        probe: a Dataset or DataLoader to draw the probe from instead of the training loader.
        every_n_epochs: measure every n-th validation run (however the Trainer schedules them: per epoch, every
            ``val_check_interval`` steps, or by time).
        seed: seed of the probe and of each measure's noise (a measure's own ``seed`` wins).
        batch_to_xy: maps a batch to ``(x, y)`` (``y`` may be None); the default reads tensors, tuples, lists and
            mappings with common key names.
        loss_fn: mean-reduced ``loss_fn(logits, y)``, cross-entropy by default (a measure's own ``loss_fn`` wins).
        output_fn: maps the model's output to its logits (default: a tensor, a tuple's first element, ``logits``).
        module: name of the submodule to measure (``pl_module.get_submodule``); the LightningModule by default.
        prefix: prefix of every logged key.
        unlabeled: a loader or ``{name: loader}`` of pools (or the datamodule's ``unlabeled_dataloader()``) whose
            loss the label-free estimators predict (``<prefix>/pool/<name>/…``); labels in a pool's batches only
            score the pool (labels that cannot score it leave it unscored, NaN/Inf inputs skip it, with one warning
            each). Without a validation loop the pools are measured at the end of each training epoch.
        recommend: the estimators whose predictions each pool's ``<prefix>/pool/<name>/pred_test_error`` and
            ``pred_test_loss`` carry, ``{"error": …, "loss": …}`` (default: ``difference_of_confidences`` for
            both).
        budget: the monitor's wall time stays within ``budget`` × the training time, but for the riders (the
            measures that only read captured outputs or a few weights, on the probe's first 256 samples), which run
            at every validation run (``<prefix>/overhead`` says what it all cost); ``None`` runs every measure on
            everything every time. A key not logged at a run is taken out of ``trainer.callback_metrics``.
        strict: re-raise a measure's error instead of switching the measure off (for tests and debugging).
        dataloader_idx: the validation loader measured, where there are several (said in one info line).
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
        unlabeled: Iterable[Any] | Mapping[str, Iterable[Any]] | None = None,
        recommend: Mapping[str, str] | None = None,
        budget: float | None = 0.1,
        strict: bool = False,
        dataloader_idx: int = 0,
    ) -> None:
        for arg, value in (
            ("probe_size", probe_size),
            ("probe_batch_size", probe_batch_size),
            ("every_n_epochs", every_n_epochs),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{arg} must be a positive integer, got {value!r}.")
        if not isinstance(dataloader_idx, int) or dataloader_idx < 0:
            raise ValueError(f"dataloader_idx must be a non-negative integer, got {dataloader_idx!r}.")
        self.dataloader_idx = dataloader_idx
        self.every_n_epochs, self.seed, self.module, self.prefix = every_n_epochs, seed, module, prefix
        self.unlabeled, self.strict, self.output_fn = unlabeled, strict, output_fn
        self.recommend = recommended(recommend)
        self.batch_to_xy = batch_to_xy or default_batch_to_xy
        self.defaults = Settings(seed=seed, loss_fn=loss_fn or F.cross_entropy)
        self.probe = TrainingProbe(probe_size, probe_batch_size, seed, self.batch_to_xy, probe)
        self.explicit = measures is not None
        self.measures = resolve_measures(measures)
        self._fresh: dict[str, dict[str, Any]] = {}
        """Each measure's state before its first fit (what its estimators remember, e.g. the previous run's values)."""
        self._fit_state: tuple[Report, dict[str, Any]] | None = None
        """The fit's report and measure states, kept aside while ``trainer.validate()`` measures."""
        self.report = Report(prefix)
        self.mae_table: list[dict[str, Any]] = []
        self._session: Session | None = None
        self._capture: ForwardCapture | None = None
        self._active = False
        self._validated = False
        self._pools: dict[str, Iterable[Any]] = {}
        self.schedule = Schedule(every_n_epochs)
        self.budget = Budget(budget)
        self.cost_table: list[dict[str, Any]] = []
        self._run_seconds = 0.0
        self._fitting = True
        self._validations = [0, 0]
        """The fit's validation runs measured, and all of them."""
        self._state_key: str | None = None

    # -- configuration ----------------------------------------------------------------------------------------
    @property
    def state_key(self) -> str:
        # Lightning reads it at every hook call; the configuration it names is fixed at construction
        if self._state_key is None:
            self._state_key = self._generate_state_key(**self._state_key_parts())
        return self._state_key

    def _state_key_parts(self) -> dict[str, Any]:
        # the user's configuration only: a release adding a default measure must not orphan checkpoints
        if self.explicit:
            return {"prefix": self.prefix, "measures": tuple(m.name for m in self.measures)}
        return {"prefix": self.prefix}

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
        return [] if self._session is None else self._session.active

    def namespaces(self) -> set[str]:
        """The key prefixes this callback logs under."""
        return {self.shared_prefix} | {f"{self.prefix}/{m.name}" for m in self.measures}

    # -- Lightning hooks --------------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage not in ("fit", "validate"):
            return
        start = time.perf_counter()
        if stage == "fit":  # a reused monitor starts afresh; a checkpoint loaded after setup continues its state
            self.report, self.schedule = Report(self.prefix), Schedule(self.every_n_epochs)
            self.mae_table, self.cost_table = [], []
            self._validations = [0, 0]
            for m in self.measures:
                m.load_state_dict(copy.deepcopy(self._fresh.setdefault(m.name, copy.deepcopy(m.state_dict()))))
        else:  # trainer.validate() leaves the fit's MAE and what its estimators remember as they were
            self._fit_state = (self.report, {m.name: copy.deepcopy(m.state_dict()) for m in self.measures})
            self.report = Report(self.prefix)
        check_namespaces(self, trainer.callbacks)  # type: ignore[attr-defined]
        net = pl_module if self.module is None else pl_module.get_submodule(self.module)
        self._net: nn.Module = getattr(net, "_orig_mod", net)  # torch.compile: measure the original module
        weight_layers(self._net)
        unlabeled = self.unlabeled
        if unlabeled is None:
            unlabeled = getattr(getattr(trainer, "datamodule", None), "unlabeled_dataloader", lambda: None)()
        self._pools = pools(unlabeled)
        self._replay = Replay(self._net, self.output_fn or default_output_fn)
        self._session = Session(
            type(self).__name__,
            self._net,
            self.measures,
            self.defaults,
            self._replay,
            pools=list(self._pools),
            recommend=self.recommend,
            explicit=self.explicit,
            strict=self.strict,
            rank=trainer.global_rank if trainer.world_size > 1 else None,
        )
        self._capture = ForwardCapture(
            self._net,
            preactivations=self._session.needs(Requirement.PREACTIVATIONS),
            measure=self.prefix,
            output_fn=self.output_fn,
        )
        self._hooks = RunHooks(self._net, self._capture, self._replay)
        self._feeder = Feeder(self._net, self._capture, self._session, self.batch_to_xy)
        self._hooks.check_compiled()
        if self._pools:
            rank_zero_info(
                f"{type(self).__name__}: each pool's {self.shared_prefix}/pool/<name>/pred_test_error is "
                f"{self.recommend['error']}'s prediction and pred_test_loss {self.recommend['loss']}'s (`recommend=`)."
            )
        if stage == "fit" or self.probe.missing:  # trainer.validate() reuses the fit's probe
            self.probe.reset()
        self._probe_batches: int | None = None
        self._said_no_probe = self._said_loader = False
        self._setup_seconds = time.perf_counter() - start

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._release()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """Whatever was raised (an interrupt included), no hook of ours stays on the model."""
        self._release()

    def _release(self) -> None:
        """Detach every hook; after ``trainer.validate()``, put the fit's report and measure states back."""
        self._active = False
        if self._capture is not None:
            self._hooks.detach()
            self._capture = None
        if self._fit_state is not None:
            self.report, states = self._fit_state
            self._fit_state = None
            for m in self.measures:
                m.load_state_dict(states[m.name])

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._hooks.check_compiled()  # `configure_model` may have compiled a submodule after `setup`
        self.budget.fit_start(setup=self._setup_seconds)
        self.schedule.check(trainer, pl_module, bool(self._pools), self.active_measures, type(self).__name__)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._validated = False

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._validated = self._validated or not trainer.sanity_checking
        self._validations[1] += not trainer.sanity_checking and trainer.state.fn == "fit"
        self._active = self._capture is not None and self.schedule.at_validation(trainer)
        if self._active:
            self._check_loaders(trainer)
        self._start(trainer)
        if not self._active and not trainer.sanity_checking:
            self.report.forget(trainer)

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._active or self._capture is None or self._session is None:
            return
        record = self._capture.pop()
        if record is None or dataloader_idx != self.dataloader_idx:
            return
        start = time.perf_counter()
        self._feeder.validation(batch, record)
        self._run_seconds += time.perf_counter() - start

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._capture is not None:
            self._capture.enabled = False
        if not self._active or self._session is None or self._capture is None:
            return
        self._active = False
        if self._session.example is None and trainer.num_val_batches[self.dataloader_idx] > 0:
            name = type(self._net).__name__
            seen = f"it was called as {name}{self._capture.unread}" if self._capture.unread else "it was not called"
            raise RuntimeError(
                f"{type(self).__name__} found no input tensor in the forward calls of {name} during validation ({seen}"
                f"): call it with the input tensor first (self(x)), as a keyword among {list(INPUT_KEYS)}, or with one "
                "mapping holding it under one of those keys; or pass `module=` naming the submodule that takes the "
                "input tensor (`batch_to_xy=` only reads the labels and the probe's inputs from a batch)."
            )
        runs = self.report.runs
        self._finish(trainer, pl_module)
        self._validations[0] += self.report.runs > runs and self._fitting and not trainer.sanity_checking

    def _check_loaders(self, trainer: Trainer) -> None:
        """Where there are several validation loaders, name the one measured, once per fit."""
        batches = trainer.num_val_batches
        if self.dataloader_idx >= len(batches):
            raise ValueError(
                f"dataloader_idx={self.dataloader_idx}, but there are {len(batches)} validation loaders: pass "
                f"`dataloader_idx=` of 0 to {len(batches) - 1}."
            )
        if len(batches) > 1 and not self._said_loader:
            self._said_loader = True
            loaders = trainer.val_dataloaders
            name = f" ({list(loaders)[self.dataloader_idx]!r})" if isinstance(loaders, Mapping) else ""
            rank_zero_info(
                f"{type(self).__name__}: of the {len(batches)} validation loaders, loader {self.dataloader_idx}{name} "
                "is measured (`dataloader_idx=` chooses another)."
            )

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Without a validation run this epoch, the unlabeled pools are measured against the training probe."""
        if self._pools and not self._validated and self.schedule.at_train_epoch_end(trainer):
            self._active = True
            self._start(trainer)
            if self._active:
                self._finish(trainer, pl_module)

    def _start(self, trainer: Trainer) -> None:
        if not self._active or self._capture is None or self._session is None:
            return
        start = time.perf_counter()
        self._fitting = trainer.state.fn == "fit"  # trainer.validate() measures everything
        needs = self._session.budget_needs()
        if self._fitting:
            decision = self._decide(trainer, needs)
            if trainer.world_size > 1:  # every rank must run the same measures on as many batches, or syncs hang
                decision = trainer.strategy.broadcast(decision, src=0)
        else:
            decision = (dict.fromkeys(needs), None)
        caps, self._probe_batches = decision
        if caps is None:  # a run costs the probe and the logging at least: it waits for the allowance
            self._active = False
            return
        self._session.to(self._net_device())
        self._session.reset()
        self._session.plan(caps)
        self._capture.record_preactivations = self._session.running(Requirement.PREACTIVATIONS)
        self._hooks.attach()
        self._run_seconds = time.perf_counter() - start
        self._capture.clear()
        self._capture.enabled = True

    def _decide(self, trainer: Trainer, needs: Mapping[str, Need]) -> tuple[dict[str, int | None] | None, int | None]:
        """This run's samples per split of each measure and the probe's batches, or None for no run."""
        caps = self.budget.plan(needs)
        if not any(cap != 0 for cap in caps.values()):
            return None, None
        return caps, self.budget.probe_batches(self.probe.sizes(trainer))

    def _finish(self, trainer: Trainer, pl_module: LightningModule) -> None:
        assert self._session is not None and self._capture is not None
        start = time.perf_counter()
        self._capture.enabled = False
        try:
            if not all(bool(torch.isfinite(p).all()) for p in self._net.parameters()):
                rank_zero_warn(f"{type(self).__name__}: the model has NaN/Inf weights; nothing measured this epoch.")
                return
            # the math kernel of attention has the double backward curvature needs (on CPU the others do not); the
            # grad mode comes back as it was, whatever a measure left
            with (
                preserved_rng(),
                evaluation_mode(self._net),
                torch.set_grad_enabled(torch.is_grad_enabled()),
                sdpa_kernel(SDPBackend.MATH),
            ):
                logs = self._measure(trainer, pl_module)
            seconds, samples = self._session.costs()
            spent = self._run_seconds + time.perf_counter() - start
            overhead = self.budget.overhead(pending=spent)
            logs[f"{self.shared_prefix}/overhead"] = torch.tensor(overhead, dtype=torch.float64)
            logs.update(
                {f"{self.prefix}/{name}/seconds": torch.tensor(t, dtype=torch.float64) for name, t in seconds.items()}
            )
            self.report.record(trainer.current_epoch, logs)
            self.report.log(trainer, pl_module, logs)
        finally:
            self._session.reset()
            self._hooks.release()
        # logging, resetting and unhooking are the monitor's cost too
        self.budget.record(seconds, samples, self._run_seconds + time.perf_counter() - start)

    def _net_device(self) -> torch.device:
        return next(self._net.parameters()).device

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        unlogged = {} if self._session is None else self._session.unlogged_recommendations()
        for kind, estimator in unlogged.items():
            rank_zero_warn(
                f"{type(self).__name__}: the recommended {kind} estimator {estimator!r} never predicted for a pool in "
                f"this fit, so {self.shared_prefix}/pool/<name>/pred_test_{kind} was not logged (is its measure among "
                "the measures, and does the reference carry labels?)."
            )
        self.mae_table = self.report.publish(trainer, type(self).__name__)
        self.cost_table = self.budget.report(type(self).__name__, *self._validations)

    def state_dict(self) -> dict[str, Any]:
        return {
            "report": self.report.state_dict(),
            "schedule": self.schedule.state_dict(),
            "measures": {m.name: m.state_dict() for m in self.measures},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.report.load_state_dict(state_dict.get("report", {}))
        self.schedule.load_state_dict(state_dict.get("schedule", {}))
        for m in self.measures:
            m.load_state_dict(state_dict.get("measures", {}).get(m.name, {}))

    # -- internals --------------------------------------------------------------------------------------------
    def _measure(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Tensor]:
        assert self._capture is not None and self._session is not None
        batches = self.probe.get(trainer, self._probe_batches)  # under a budget, planned like the measures
        if self.probe.missing and not self._said_no_probe:
            self._said_no_probe = True
            rank_zero_info(
                f"{type(self).__name__}: there is no training data to draw the probe from (trainer.validate() before "
                "any fit, with no training loader): measuring without it, so only the values and predictions that "
                "need no train split are logged; pass `probe=` a Dataset or DataLoader of training samples for all."
            )
        sizes = self.probe.sizes(trainer)[: len(batches)]
        progress = EpochEndProgress(trainer, len(batches))
        try:
            with exclusive(self._capture):
                self._capture.enabled = True
                start, measures = time.perf_counter(), self._session.measure_seconds()
                calls = []
                for batch in batches:
                    calls.append(self._feeder.batch(move_data_to_device(batch, pl_module.device), "train"))
                    progress.advance()
                forward = time.perf_counter() - start - (self._session.measure_seconds() - measures)
                self.budget.probe_timed(forward, sum(sizes))
                if self._fitting and self.budget.call is None and calls:  # the unit of the budget's guesses
                    self.budget.call_timed(self._feeder.time_call(calls[0].head(TRIAL_SAMPLES), self._net_device()))
                for name, loader in self._pools.items():  # labels only score the pool's loss
                    for batch in shard(loader, self.batch_to_xy, trainer.global_rank, trainer.world_size):
                        self._feeder.batch(move_data_to_device(batch, pl_module.device), f"pool/{name}")
                self._capture.enabled = False
            with exclusive(None):
                self._session.agree(trainer.strategy.all_gather if trainer.world_size > 1 else None)
                return self._session.evaluate(self.prefix, self.shared_prefix, self.report)
        finally:
            self._capture.enabled = False
            progress.close()
