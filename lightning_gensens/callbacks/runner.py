"""One fit's measuring runs: planning a run under the budget, feeding the measures from the model's validation
forward passes, the training probe and the unlabeled pools, and turning the run into logged values, each step in a
section of the budget's stopwatch."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from lightning_gensens.batches import BatchToXY, shard
from lightning_gensens.callbacks.budget import CALLS, TRIAL_SAMPLES, Budget, Need
from lightning_gensens.callbacks.feeding import Feeder
from lightning_gensens.callbacks.hooks import RunHooks
from lightning_gensens.callbacks.keys import OVERHEAD, SECONDS, Keys, pool
from lightning_gensens.callbacks.probe import TrainingProbe
from lightning_gensens.callbacks.progress import EpochEndProgress
from lightning_gensens.callbacks.reporting import Report
from lightning_gensens.callbacks.session import Session
from lightning_gensens.callbacks.stopwatch import PROBE, measures
from lightning_gensens.capture import ForwardCapture, exclusive
from lightning_gensens.measures import Requirement
from lightning_gensens.replay import INPUT_KEYS
from lightning_gensens.utilities import evaluation_mode, finite_parameters, preserved_rng


class Runner:
    """The measuring runs of one fit (or one ``trainer.validate()``) of ``net``: :meth:`start` plans a run and
    hooks the model, :meth:`validation_batch` feeds the model's own forward pass on a validation batch,
    :meth:`finish` evaluates the probe and the pools, computes every measure and logs."""

    def __init__(
        self,
        owner: str,
        net: nn.Module,
        session: Session,
        capture: ForwardCapture,
        hooks: RunHooks,
        feeder: Feeder,
        *,
        budget: Budget,
        probe: TrainingProbe,
        report: Report,
        pools: Mapping[str, Iterable[Any]],
        batch_to_xy: BatchToXY,
        keys: Keys,
        dataloader_idx: int,
    ) -> None:
        self.owner, self.net, self.session, self.capture, self.hooks, self.feeder = (
            owner,
            net,
            session,
            capture,
            hooks,
            feeder,
        )
        self.budget, self.probe, self.report, self.pools = budget, probe, report, pools
        self.batch_to_xy, self.keys, self.dataloader_idx = batch_to_xy, keys, dataloader_idx
        self.stopwatch = budget.stopwatch
        self.fitting = True
        self._probe_batches: int | None = None
        self._probe_samples = 0
        self._said_no_probe = self._said_loader = False

    def start(self, trainer: Trainer) -> bool:
        """Plan a run and hook the model; False where no run is planned (it waits for the allowance)."""
        with self.stopwatch("plan"):
            self.fitting = trainer.state.fn == "fit"  # trainer.validate() measures everything
            needs = self.session.budget_needs()
            if self.fitting:
                decision = self._decide(trainer, needs)
                if trainer.world_size > 1:  # every rank must run the same measures on as many batches, or syncs hang
                    decision = trainer.strategy.broadcast(decision, src=0)
            else:
                decision = (dict.fromkeys(needs), None)
            caps, self._probe_batches = decision
            if caps is None:  # a run costs the probe and the logging at least
                return False
            device = self._device()
            self.stopwatch.use(device)
            self.session.to(device)
            self.session.reset()
            self.session.plan(caps)
            self.capture.record_preactivations = self.session.running(Requirement.PREACTIVATIONS)
            self.capture.record_head = self.session.running(Requirement.HEAD)
            self.hooks.attach()
            self.capture.clear()
            self.capture.enabled = True
            return True

    def _decide(self, trainer: Trainer, needs: Mapping[str, Need]) -> tuple[dict[str, int | None] | None, int | None]:
        """This run's samples per split of each measure and the probe's batches, or None for no run."""
        caps = self.budget.plan(needs)
        if not any(cap != 0 for cap in caps.values()):
            return None, None
        return caps, self.budget.probe_batches(self.probe.sizes(trainer))

    def validation_batch(self, batch: Any, dataloader_idx: int) -> None:
        """Feed the model's forward pass on a validation batch of the measured loader."""
        with self.stopwatch("feeding"):
            record = self.capture.pop()
            if record is not None and dataloader_idx == self.dataloader_idx:
                self.feeder.validation(batch, record)

    def check_loaders(self, trainer: Trainer) -> None:
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
                f"{self.owner}: of the {len(batches)} validation loaders, loader {self.dataloader_idx}{name} "
                "is measured (`dataloader_idx=` chooses another)."
            )

    def check_input(self, trainer: Trainer) -> None:
        """Refuse a validation run in which no forward call of the model showed its input tensor."""
        if self.session.example is None and trainer.num_val_batches[self.dataloader_idx] > 0:
            name = type(self.net).__name__
            unread = self.capture.unread
            seen = f"it was called as {name}{unread}" if unread else "it was not called"
            raise RuntimeError(
                f"{self.owner} found no input tensor in the forward calls of {name} during validation ({seen}): call "
                f"it with the input tensor first (self(x)), as a keyword among {list(INPUT_KEYS)}, or with one "
                "mapping holding it under one of those keys; or pass `module=` naming the submodule that takes the "
                "input tensor (`batch_to_xy=` only reads the labels and the probe's inputs from a batch)."
            )

    def finish(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Evaluate the probe and the pools, compute every measure, account the run and log it."""
        self.capture.enabled = False
        logs: dict[str, Tensor] | None = None
        samples: dict[str, int] = {}
        self._probe_samples = 0
        try:
            with self.stopwatch("evaluate"):
                if not finite_parameters(self.net):
                    rank_zero_warn(f"{self.owner}: the model has NaN/Inf weights; nothing measured this epoch.")
                else:
                    # the math kernel of attention has the double backward curvature needs (on CPU the others do
                    # not); the grad mode comes back as it was, whatever a measure left
                    with (
                        preserved_rng(),
                        evaluation_mode(self.net),
                        torch.set_grad_enabled(torch.is_grad_enabled()),
                        sdpa_kernel(SDPBackend.MATH),
                    ):
                        logs = self._measure(trainer, pl_module)
                    samples = self.session.ran()
            run = self.stopwatch.flush()  # everything since the last run's record: one synchronisation on CUDA
            seconds = measures(run)
            seconds = {name: seconds.get(name, 0.0) for name in samples}
            if self._probe_samples:
                self.budget.probe_timed(run.get(PROBE, 0.0), self._probe_samples)
            self.budget.record(seconds, samples, sum(run.values()), probe=run.get(PROBE, 0.0))
            if logs is not None:
                with self.stopwatch("logging"):
                    logs[self.keys.shared(OVERHEAD)] = torch.tensor(self.budget.overhead(), dtype=torch.float64)
                    logs.update(
                        {
                            self.keys.measure(m, SECONDS): torch.tensor(t, dtype=torch.float64)
                            for m, t in seconds.items()
                        }
                    )
                    self.report.record(trainer.current_epoch, logs)
                    self.report.log(trainer, pl_module, logs)
        finally:
            with self.stopwatch("logging"):  # resetting and unhooking are the monitor's cost too
                self.session.reset()
                self.hooks.release()

    def _measure(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Tensor]:
        batches = self.probe.get(trainer, self._probe_batches)  # under a budget, planned like the measures
        if self.probe.missing and not self._said_no_probe:
            self._said_no_probe = True
            rank_zero_info(
                f"{self.owner}: there is no training data to draw the probe from (trainer.validate() before "
                "any fit, with no training loader): measuring without it, so only the values and predictions that "
                "need no train split are logged; pass `probe=` a Dataset or DataLoader of training samples for all."
            )
        sizes = self.probe.sizes(trainer)[: len(batches)]
        progress = EpochEndProgress(trainer, len(batches))
        try:
            with exclusive(self.capture):
                self.capture.enabled = True
                with self.stopwatch(PROBE):  # the measures fed in it are sections of their own
                    calls = []
                    for batch in batches:
                        calls.append(self.feeder.batch(move_data_to_device(batch, pl_module.device), "train"))
                        progress.advance()
                self._probe_samples = sum(sizes)
                if self.fitting and self.budget.call is None and calls:  # the unit of the budget's guesses
                    with self.stopwatch("unit"):
                        call, clock = calls[0].head(TRIAL_SAMPLES), self.stopwatch.clock
                        self.budget.call_timed(min(self.feeder.time_call(call, clock) for _ in range(CALLS)))
                with self.stopwatch("pools"):
                    for name, loader in self.pools.items():  # labels only score the pool's loss
                        for batch in shard(loader, self.batch_to_xy, trainer.global_rank, trainer.world_size):
                            self.feeder.batch(move_data_to_device(batch, pl_module.device), pool(name))
                self.capture.enabled = False
            with exclusive(None):
                self.session.agree(trainer.strategy.all_gather if trainer.world_size > 1 else None)
                return self.session.evaluate(self.keys, self.report)
        finally:
            self.capture.enabled = False
            progress.close()

    def release(self) -> None:
        """Detach every hook of ours from the model."""
        self.hooks.detach()

    def _device(self) -> torch.device:
        return next(self.net.parameters()).device
