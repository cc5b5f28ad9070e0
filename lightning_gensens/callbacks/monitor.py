"""GeneralizationMonitor: the one orchestrator. It captures the model's validation forward passes, evaluates a
training probe, feeds every measure's Metrics, and logs actual beside predicted test loss."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ot  # noqa: F401  the transport measure's solver loads with the callbacks, never inside a fit's timed runs
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_gensens.batches import BatchToXY, default_batch_to_xy
from lightning_gensens.callbacks.budget import Budget
from lightning_gensens.callbacks.configuration import (
    Schedule,
    check_namespaces,
    pools,
    recommended,
    resolve_measures,
    watched,
)
from lightning_gensens.callbacks.feeding import Feeder
from lightning_gensens.callbacks.hooks import RunHooks
from lightning_gensens.callbacks.keys import Keys, predicted
from lightning_gensens.callbacks.probe import TrainingProbe
from lightning_gensens.callbacks.reporting import FIGURE_SECONDS, Report
from lightning_gensens.callbacks.runner import Runner
from lightning_gensens.callbacks.session import Session
from lightning_gensens.capture import ForwardCapture, OutputFn, default_output_fn
from lightning_gensens.measures import LossFn, Measure, Requirement, Settings
from lightning_gensens.replay import Replay
from lightning_gensens.utilities import weight_layers


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
        every_n_epochs: measure every n-th validation run (per epoch, every ``val_check_interval`` steps, or by time).
        seed: seed of the probe and of each measure's noise (a measure's own ``seed`` wins).
        batch_to_xy: maps a batch to ``(x, y)`` (``y`` may be None); the default reads tensors, tuples, lists, dicts.
        loss_fn: mean-reduced ``loss_fn(logits, y)``, cross-entropy by default (a measure's own ``loss_fn`` wins).
        output_fn: maps the model's output to its logits (default: a tensor, a tuple's first element, ``logits``).
        module: name of the submodule to measure (``pl_module.get_submodule``); the LightningModule by default.
        prefix: prefix of every logged key.
        unlabeled: a loader or ``{name: loader}`` of pools (or the datamodule's ``unlabeled_dataloader()``) whose
            loss the label-free estimators predict (``<prefix>/pool/<name>/…``); labels in a pool's batches only
            score the pool (labels that cannot score it leave it unscored, NaN/Inf inputs skip it, with one warning
            each). Without a validation loop the pools are measured at the end of each training epoch.
        recommend: the estimators whose predictions each pool's ``<prefix>/pool/<name>/pred_test_error`` and
            ``pred_test_loss`` carry, ``{"error": …, "loss": …}`` (default: ``shift_gated``, the shift test's
            estimator, for both; where the pools are measured against the training probe, without a labelled
            validation run, ``difference_of_confidences``).
        budget: the monitor's wall time (all its work, on one stopwatch) stays within ``budget`` × the training time
            (``<prefix>/overhead``): the riders (baselines, ``temperature_scaling``, ``shift_test``) at every run it
            affords (every run where a callback watches our keys), the others at evenly spaced runs (see
            :class:`~lightning_gensens.callbacks.budget.Budget`). ``None`` runs everything on everything every time.
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
        self._runner: Runner | None = None
        self._active = False
        self._validated = False
        self.schedule = Schedule(every_n_epochs)
        self.budget = Budget(budget)
        """Plans and accounts the monitor's time; its ``stopwatch`` times every piece of the monitor's work."""
        self.cost_table: list[dict[str, Any]] = []
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
    def keys(self) -> Keys:
        """Builds every key this monitor logs."""
        return Keys(self.prefix, self.shared_prefix)

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
        return {self.shared_prefix} | {self.keys(m.name) for m in self.measures}

    # -- Lightning hooks --------------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage not in ("fit", "validate"):
            return
        if stage == "fit":
            self.budget.fit_start()  # the fit's clock starts with our setup, which it counts
        with self.budget.stopwatch("setup"):
            self._setup(trainer, pl_module, stage)
        self.budget.charge(sum(self.budget.stopwatch.flush().values()))

    def _setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":  # a reused monitor starts afresh; a checkpoint loaded after setup continues its state
            self.report, self.schedule = Report(self.prefix), Schedule(self.every_n_epochs)
            self.mae_table, self.cost_table = [], []
            self._validations = [0, 0]
            for m in self.measures:
                m.load_state_dict(copy.deepcopy(self._fresh.setdefault(m.name, copy.deepcopy(m.state_dict()))))
        else:  # trainer.validate() leaves the fit's MAE and what its estimators remember as they were
            self._fit_state = (self.report, {m.name: copy.deepcopy(m.state_dict()) for m in self.measures})
            self.report = Report(self.prefix)
        callbacks = trainer.callbacks  # type: ignore[attr-defined]
        check_namespaces(self, callbacks)
        self.budget.watched = watched(self, callbacks, self.budget.fraction is not None)
        net = pl_module if self.module is None else pl_module.get_submodule(self.module)
        net = getattr(net, "_orig_mod", net)  # torch.compile: measure the original module
        weight_layers(net)
        unlabeled = self.unlabeled
        if unlabeled is None:
            unlabeled = getattr(getattr(trainer, "datamodule", None), "unlabeled_dataloader", lambda: None)()
        named_pools = pools(unlabeled)
        replay = Replay(net, self.output_fn or default_output_fn)
        self._session = Session(
            type(self).__name__,
            net,
            self.measures,
            self.defaults,
            replay,
            pools=list(named_pools),
            recommend=self.recommend,
            explicit=self.explicit,
            strict=self.strict,
            rank=trainer.global_rank if trainer.world_size > 1 else None,
            stopwatch=self.budget.stopwatch,
        )
        capture = ForwardCapture(
            net,
            preactivations=self._session.needs(Requirement.PREACTIVATIONS),
            measure=self.prefix,
            output_fn=self.output_fn,
            head=self._session.needs(Requirement.HEAD),
        )
        hooks = RunHooks(net, capture, replay, root=pl_module)
        self._runner = Runner(
            type(self).__name__,
            net,
            self._session,
            capture,
            hooks,
            Feeder(net, capture, self._session, self.batch_to_xy),
            budget=self.budget,
            probe=self.probe,
            report=self.report,
            pools=named_pools,
            batch_to_xy=self.batch_to_xy,
            keys=self.keys,
            dataloader_idx=self.dataloader_idx,
        )
        hooks.check_compiled()
        if named_pools:
            pool_key = self.keys.shared(predicted("error"), "pool/<name>/")
            rank_zero_info(f"{type(self).__name__}: each pool's {pool_key} is {self.recommend}.")
        if stage == "fit" or self.probe.missing:  # trainer.validate() reuses the fit's probe
            self.probe.reset()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._release()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """Whatever was raised (an interrupt included), no hook of ours stays on the model."""
        self._release()

    def _release(self) -> None:
        """Detach every hook; after ``trainer.validate()``, put the fit's report and measure states back."""
        self._active = False
        if self._runner is not None:
            self._runner.release()
            self._runner = None
        if self._fit_state is not None:
            self.report, states = self._fit_state
            self._fit_state = None
            for m in self.measures:
                m.load_state_dict(states[m.name])

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        with self.budget.stopwatch("hooks"):
            if self._runner is not None:
                self._runner.hooks.check_compiled()  # `configure_model` may have compiled a submodule after `setup`
            owner = type(self).__name__
            runs = self.schedule.check(trainer, pl_module, bool(self._pools), self.active_measures, owner)
            self.budget.expect(runs)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._validated = False

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        with self.budget.stopwatch("hooks"):
            self._validated = self._validated or not trainer.sanity_checking
            self._validations[1] += not trainer.sanity_checking and trainer.state.fn == "fit"
            runner = self._runner
            self._active = runner is not None and self.schedule.at_validation(trainer)
            if runner is not None and self._active:
                runner.check_loaders(trainer)
                self._active = runner.start(trainer)
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
        if self._active and self._runner is not None:
            self._runner.validation_batch(batch, dataloader_idx)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        runner = self._runner
        if runner is None:
            return
        runner.capture.enabled = False
        if not self._active:
            return
        self._active = False
        with self.budget.stopwatch("hooks"):
            runner.check_input(trainer)
        runs = self.report.runs
        runner.finish(trainer, pl_module)
        self._validations[0] += self.report.runs > runs and runner.fitting and not trainer.sanity_checking

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Without a validation run this epoch, the unlabeled pools are measured against the training probe."""
        runner = self._runner
        if runner is None or not self._pools or self._validated:
            return
        with self.budget.stopwatch("hooks"):
            measuring = self.schedule.at_train_epoch_end(trainer) and runner.start(trainer)
        if measuring:
            runner.finish(trainer, pl_module)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        owner, stopwatch = type(self).__name__, self.budget.stopwatch
        with stopwatch("report"):
            unlogged = {} if self._session is None else self._session.unlogged_recommendations()
            for kind, estimator in unlogged.items():
                rank_zero_warn(
                    f"{owner}: the recommended {kind} estimator {estimator!r} never predicted for a pool in this fit, "
                    f"so {self.keys.shared(predicted(kind), 'pool/<name>/')} was not logged (is its measure among the "
                    "measures, and does the reference carry labels?)."
                )
            self.mae_table = self.report.publish(trainer, owner, figure=self.budget.affords(FIGURE_SECONDS))
        self.budget.charge(sum(stopwatch.flush().values()))
        self.budget.close()
        self.cost_table = self.budget.report(owner, *self._validations)

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

    @property
    def _pools(self) -> Mapping[str, Iterable[Any]]:
        return {} if self._runner is None else self._runner.pools
