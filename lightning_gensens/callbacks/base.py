"""Orchestration shared by every callback: capture, training probe, metrics per split, estimators, logging."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset, Subset
from torchmetrics import Metric

from lightning_gensens import estimators
from lightning_gensens.capture import Captured, ForwardCapture
from lightning_gensens.plotting import plot_predictions, prediction_series
from lightning_gensens.utilities import (
    BatchToXY,
    EpochEndProgress,
    default_batch_to_xy,
    evaluation_mode,
    preserved_rng,
    weight_layers,
)

LossFn = Callable[[Tensor, Tensor], Tensor]
MAX_HISTORY = 100_000
_NO_LOSS = {"loss": torch.tensor(math.nan), "error": torch.tensor(math.nan)}  # a split without labels
SPLITS = ("train", "val")


@dataclass
class Estimate:
    """A predicted test loss and, where the estimator defines one, a predicted test error."""

    loss: Tensor
    error: Tensor | None = None


class SplitLoss(Metric):
    """Mean loss and error rate of one split, summed across batches and DDP ranks."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, loss_fn: LossFn, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.loss_fn = loss_fn
        for state in ("loss_sum", "errors", "count", "classified"):
            self.add_state(state, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, logits: Tensor, y: Tensor) -> None:
        n = logits.shape[0]
        self.loss_sum += self.loss_fn(logits.float(), y).double() * n
        self.count += n
        if logits.ndim == 2 and not y.is_floating_point():
            self.errors += (logits.argmax(dim=1) != y).sum()
            self.classified += n

    def compute(self) -> dict[str, Tensor]:
        nan = torch.full_like(self.count, math.nan)
        return {
            "loss": self.loss_sum / self.count if self.count > 0 else nan,
            "error": self.errors / self.classified if self.classified > 0 else nan,
        }


class GensensCallback(Callback):
    """Base of every lightning_gensens callback; subclasses say which measures it runs.

    At each validation run of every ``every_n_epochs``-th epoch (sanity check skipped) it hooks the model's own
    validation forward passes for the ``val`` split, evaluates a fixed training probe (``probe_size`` samples
    drawn once with ``seed`` from the training dataset, sharded over DDP ranks) in eval mode for the ``train``
    split, and logs actual and predicted test loss and error. Measuring restores the model's mode and the global
    RNG state, never fills ``.grad`` and removes its hooks in ``teardown``.

    Args:
        probe_size: number of training samples in the probe.
        probe_batch_size: batch size of the probe's forward passes.
        every_n_epochs: measure every n-th epoch.
        seed: seed of the probe draw and of every measure's noise.
        batch_to_xy: maps a batch to ``(x, y)`` (``y`` may be None); the default reads tuples, lists and dicts.
        loss_fn: mean-reduced ``loss_fn(logits, y)``; cross-entropy by default.
        module: name of the submodule to measure (``pl_module.get_submodule``); the LightningModule by default.
            Its ``forward(x)`` must return the logits.
        prefix: prefix of every logged key.
        unlabeled: batches without labels (a DataLoader; or define ``unlabeled_dataloader()`` on the datamodule)
            on which the label-free measures are evaluated in place of the validation data; label-needing
            measures are then skipped. The actual test loss still comes from validation labels where present.
    """

    def __init__(
        self,
        *,
        probe_size: int = 2048,
        probe_batch_size: int = 256,
        every_n_epochs: int = 1,
        seed: int = 0,
        batch_to_xy: BatchToXY | None = None,
        loss_fn: LossFn | None = None,
        module: str | None = None,
        prefix: str = "gensens",
        unlabeled: Iterable[Any] | None = None,
    ) -> None:
        for arg, value in (
            ("probe_size", probe_size),
            ("probe_batch_size", probe_batch_size),
            ("every_n_epochs", every_n_epochs),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{arg} must be a positive integer, got {value!r}.")
        self.probe_size, self.probe_batch_size, self.every_n_epochs = probe_size, probe_batch_size, every_n_epochs
        self.seed, self.module, self.prefix, self.unlabeled = seed, module, prefix, unlabeled
        self.batch_to_xy = batch_to_xy or default_batch_to_xy
        self.loss_fn = loss_fn or F.cross_entropy
        self.mae_table: list[dict[str, Any]] = []
        self.history: list[dict[str, float]] = []
        self._wandb_keys: set[str] = set()
        self._mae: dict[str, list[float]] = {}
        self._probe: list[tuple[Tensor, Tensor | None]] | None = None
        self._capture: ForwardCapture | None = None
        self._active = False

    # -- what subclasses provide ------------------------------------------------------------------------------
    def _measures(self) -> list[MeasureCallback]:
        raise NotImplementedError

    def _select_measures(self, net: nn.Module) -> None:
        """Validate the model (and labels) for each measure; the monitor drops inapplicable defaults here."""
        for m in self._measures():
            self._check_measure(m, net)

    def _check_measure(self, m: MeasureCallback, net: nn.Module) -> None:
        if m.needs_labels and self.unlabeled is not None:
            raise ValueError(f"{m.name} needs labels, so it cannot predict from the unlabeled data.")
        m.check_model(net)

    # -- Lightning hooks --------------------------------------------------------------------------------------
    @property
    def state_key(self) -> str:
        return self._generate_state_key(prefix=self.prefix, measures=tuple(m.name for m in self._measures()))

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._net = pl_module if self.module is None else pl_module.get_submodule(self.module)
        datamodule = getattr(trainer, "datamodule", None)
        if self.unlabeled is None and hasattr(datamodule, "unlabeled_dataloader"):
            self.unlabeled = datamodule.unlabeled_dataloader()
        self._select_measures(self._net)
        measures = self._measures()
        for m in measures:  # a measure driven by a monitor uses the monitor's loss and seed
            m.loss_fn, m.seed = self.loss_fn, self.seed
        self._capture = ForwardCapture(
            self._net, preactivations=any(m.needs_preactivations for m in measures), measure=self.prefix
        ).attach()
        self._split_loss = {split: SplitLoss(self.loss_fn) for split in SPLITS}
        self._metrics = {split: {m.name: m.make_metric() for m in measures if not m.weight_only} for split in SPLITS}
        self._weight_metrics = {m.name: m.make_metric() for m in measures if m.weight_only}

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
        if not self._active:
            return
        for metric in self._all_metrics():
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
        if not self._active:
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
        self._feed("val", record, measures=self.unlabeled is None)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._active:
            return
        self._capture.enabled = False
        self._active = False
        if self._example is None:
            raise RuntimeError(
                f"{type(self).__name__} saw no forward call of {type(self._net).__name__} during validation: "
                "call the model as self(x) in validation_step, or pass `module=` naming the submodule to measure."
            )
        if not all(bool(torch.isfinite(p).all()) for p in self._net.parameters()):
            rank_zero_warn(f"{type(self).__name__}: the model has NaN/Inf weights; nothing measured this epoch.")
            self._reset_metrics()
            return
        with preserved_rng(), evaluation_mode(self._net):  # iterating a DataLoader draws from the global RNG
            if self._probe is None:
                self._probe = self._draw_probe(trainer)
            progress = EpochEndProgress(trainer, len(self._probe) + len(self._measures()))
            try:
                self._run_probe(pl_module, progress)
                if self.unlabeled is not None:
                    self._run_unlabeled(trainer, pl_module)
                logs = self._evaluate(progress)
            finally:
                progress.close()
        self._record_history(trainer.current_epoch, logs)
        self._define_wandb_step(trainer, logs)
        pl_module.log_dict(logs, sync_dist=trainer.world_size > 1)
        self._reset_metrics()

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.mae_table = [
            {
                "estimator": est,
                "mae_test_loss": s_loss / n_loss if n_loss else math.nan,
                "mae_test_error": s_err / n_err if n_err else math.nan,
                "epochs": int(n_loss),
            }
            for est, (s_loss, s_err, n_loss, n_err) in self._mae.items()
        ]
        if self.mae_table:
            # log_dir broadcasts, so it is read on every rank; without a logger nothing is written to disk
            self._report_table(trainer, trainer.log_dir if trainer.loggers else None)

    def state_dict(self) -> dict[str, Any]:
        return {
            "mae": {k: list(v) for k, v in self._mae.items()},
            "history": [dict(r) for r in self.history],
            "measures": {m.name: m.measure_state() for m in self._measures()},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._mae = {k: list(v) for k, v in state_dict.get("mae", {}).items()}
        self.history = [dict(r) for r in state_dict.get("history", [])]
        for m in self._measures():
            m.load_measure_state(state_dict.get("measures", {}).get(m.name, {}))

    # -- internals --------------------------------------------------------------------------------------------
    def _all_metrics(self) -> list[Metric]:
        metrics: list[Metric] = [*self._split_loss.values(), *self._weight_metrics.values()]
        return metrics + [m for split in self._metrics.values() for m in split.values()]

    def _reset_metrics(self) -> None:
        for metric in self._all_metrics():
            metric.reset()

    def _feed(self, split: str, record: Captured, measures: bool = True) -> None:
        if self._example is None:
            self._example = record
        if record.y is not None:
            self._split_loss[split].update(record.logits, record.y)
        for m in self._measures() if measures else ():
            if m.weight_only:
                continue
            if m.needs_labels and record.y is None:
                raise ValueError(f"{m.name} needs labels, but a {split} batch carries none.")
            m.update(self._metrics[split][m.name], record, self._net)

    def _draw_probe(self, trainer: Trainer) -> list[tuple[Tensor, Tensor | None]]:
        loader = trainer.train_dataloader
        dataset = getattr(loader, "dataset", None)
        if dataset is None or isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
            raise TypeError(
                f"{type(self).__name__} draws its training probe from `trainer.train_dataloader.dataset`, which "
                f"must be a map-style dataset with __len__; got {type(dataset).__name__}."
            )
        if len(dataset) == 0:
            raise ValueError(f"{type(self).__name__}: the training dataset is empty, so the probe would be empty.")
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(self.seed))
        shard = order[: self.probe_size][trainer.global_rank :: trainer.world_size]
        probe_loader = DataLoader(
            Subset(dataset, shard.tolist()),
            batch_size=self.probe_batch_size,
            collate_fn=getattr(loader, "collate_fn", None),
        )
        return [self.batch_to_xy(batch) for batch in probe_loader]

    def _run_probe(self, pl_module: LightningModule, progress: EpochEndProgress) -> None:
        self._capture.enabled = True
        try:
            for x, y in self._probe:
                self._net(x.to(pl_module.device))
                record = self._capture.pop()
                record.y = None if y is None else y.to(pl_module.device)
                self._feed("train", record)
                progress.advance()
        finally:
            self._capture.enabled = False

    def _run_unlabeled(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Feed the measures' ``val`` split from the unlabeled batches (round-robin over DDP ranks)."""
        self._capture.enabled = True
        try:
            for i, batch in enumerate(self.unlabeled):
                if i % trainer.world_size == trainer.global_rank:
                    self._net(self.batch_to_xy(batch)[0].to(pl_module.device))
                    self._feed("val", self._capture.pop())
        finally:
            self._capture.enabled = False

    def _evaluate(self, progress: EpochEndProgress) -> dict[str, Tensor]:
        p = self.prefix
        train, val = (self._split_loss[s].compute() if self._split_loss[s].update_called else _NO_LOSS for s in SPLITS)
        logs = {
            f"{p}/train_loss": train["loss"],
            f"{p}/test_loss": val["loss"],
            f"{p}/train_error": train["error"],
            f"{p}/test_error": val["error"],
        }
        logs = {k: v for k, v in logs.items() if bool(torch.isfinite(v))}  # absent labels: nothing, not NaN
        actual_loss, actual_error = float(val["loss"]), float(val["error"])
        for m in self._measures():
            if m.weight_only:
                metric = self._weight_metrics[m.name]
                m.update_weights(metric, self._net, self._example)
                computed = {"value": metric.compute()}
            else:
                computed = m.compute({split: self._metrics[split][m.name] for split in SPLITS})
            logs.update({f"{p}/{m.name}/{key}": value for key, value in m.values(computed).items()})
            for est, estimate in m.estimate(computed, train).items():
                logs.update(self._score(est, estimate, actual_loss, actual_error))
            progress.advance()
        return logs

    def _score(self, est: str, estimate: Estimate, actual_loss: float, actual_error: float) -> dict[str, Tensor]:
        """Log an estimate and fold its absolute error into the running MAE."""
        p = self.prefix
        loss = float(estimate.loss)
        if not math.isfinite(loss):
            rank_zero_warn(f"{est}: the predicted test loss is not finite ({loss}); not logged this epoch.")
            return {}
        logs = {f"{p}/{est}/pred_test_loss": estimate.loss}
        mae = self._mae.setdefault(est, [0.0, 0.0, 0, 0])
        if math.isfinite(actual_loss):
            mae[0] += abs(loss - actual_loss)
            mae[2] += 1
            logs[f"{p}/{est}/mae"] = torch.tensor(mae[0] / mae[2])
        if estimate.error is not None and math.isfinite(float(estimate.error)):
            logs[f"{p}/{est}/pred_test_error"] = estimate.error
            if math.isfinite(actual_error):
                mae[1] += abs(float(estimate.error) - actual_error)
                mae[3] += 1
        return logs

    def _record_history(self, epoch: int, logs: dict[str, Tensor]) -> None:
        """Keep the actual and predicted test loss per epoch (bounded) for the end-of-fit figure and chart."""
        row = {"epoch": float(epoch)}
        row.update(
            {k: float(v) for k, v in logs.items() if k.endswith(("/test_loss", "/train_loss", "/pred_test_loss"))}
        )
        self.history.append(row)
        del self.history[:-MAX_HISTORY]

    @rank_zero_only
    def _define_wandb_step(self, trainer: Trainer, logs: dict[str, Tensor]) -> None:
        """Plot our keys against ``epoch`` on W&B: exact names, since WandbLogger's ``*`` glob would win a glob."""
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                for key in sorted(set(logs) - self._wandb_keys):
                    logger.experiment.define_metric(key, step_metric="epoch")
                self._wandb_keys |= set(logs)

    @rank_zero_only
    def _report_table(self, trainer: Trainer, log_dir: str | None) -> None:
        header = f"{'estimator':<34}{'MAE test loss':>15}{'MAE test error':>16}{'epochs':>8}"
        lines = [header, "-" * len(header)] + [
            f"{r['estimator']:<34}{r['mae_test_loss']:>15.4g}{r['mae_test_error']:>16.4g}{r['epochs']:>8}"
            for r in self.mae_table
        ]
        print(f"\n{type(self).__name__}: mean absolute error of the predicted test loss and error\n" + "\n".join(lines))
        finals = {f"{self.prefix}/{r['estimator']}/final_mae": r["mae_test_loss"] for r in self.mae_table}
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                self._report_wandb(logger, finals)
            else:
                logger.log_metrics(finals, step=trainer.global_step)
        if log_dir is not None:
            os.makedirs(log_dir, exist_ok=True)
            with open(os.path.join(log_dir, f"{self.prefix}_mae.csv"), "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(self.mae_table[0]))
                writer.writeheader()
                writer.writerows(self.mae_table)
            if not all(isinstance(logger, WandbLogger) for logger in trainer.loggers):
                plot_predictions(
                    self.history, os.path.join(log_dir, f"{self.prefix}_predicted_vs_actual.png"), prefix=self.prefix
                )

    def _report_wandb(self, logger: WandbLogger, finals: dict[str, float]) -> None:
        """One line chart of actual and predicted test loss per estimator, the MAE table, the summary."""
        import wandb

        series = prediction_series(self.history, self.prefix)
        run = logger.experiment
        run.log(
            {
                f"{self.prefix}/predicted_vs_actual": wandb.plot.line_series(
                    xs=[xs for xs, _ in series.values()],
                    ys=[ys for _, ys in series.values()],
                    keys=list(series),
                    title="Predicted versus actual test loss",
                    xname="epoch",
                ),
                f"{self.prefix}/mae_table": wandb.Table(
                    columns=list(self.mae_table[0]), data=[list(r.values()) for r in self.mae_table]
                ),
            }
        )
        for key, value in finals.items():
            run.summary[key] = value


class MeasureCallback(GensensCallback):
    """One measure: its Metric per split, its update from captured forward passes, and its estimators.

    Used alone, it is a full callback (keyword arguments as :class:`GensensCallback`); handed to
    :class:`~lightning_gensens.GeneralizationMonitor`, the monitor drives it and its own probe settings are unused.
    """

    name: ClassVar[str]
    needs_labels: ClassVar[bool] = False
    needs_preactivations: ClassVar[bool] = False
    weight_only: ClassVar[bool] = False
    """Computed from the weights once per epoch (keys ``<name>/value``) rather than per split."""

    def _measures(self) -> list[MeasureCallback]:
        return [self]

    def check_model(self, net: nn.Module) -> None:
        """Raise ``ValueError`` if the measure is not defined for ``net``."""
        weight_layers(net)

    def make_metric(self) -> Metric:
        raise NotImplementedError

    def update(self, metric: Metric, record: Captured, net: nn.Module) -> None:
        """Feed one captured forward pass of a split (data measures)."""
        raise NotImplementedError

    def update_weights(self, metric: Metric, net: nn.Module, example: Captured) -> None:
        """Feed the current weights once per measured epoch (weight-only measures)."""
        raise NotImplementedError

    def compute(self, metrics: dict[str, Metric]) -> dict[str, Any]:
        """Each split's value (``train`` probe, ``val``) from its Metric; a measure comparing splits overrides it."""
        return {split: metric.compute() for split, metric in metrics.items()}

    def values(self, computed: dict[str, Any]) -> dict[str, Tensor]:
        """Scalars to log under ``<prefix>/<name>/``: by default the computed value of each split."""
        return dict(computed)

    def estimate(self, computed: dict[str, Any], train: dict[str, Tensor]) -> dict[str, Estimate]:
        """Predicted test loss/error per estimator, from this epoch's values and the probe's loss and error.

        By default the ratio rule m(X_te)/m(X_tr)·l_tr of the follow-up paper, applied to the probe's error too.
        """
        test, probe = computed["val"], computed["train"]
        return {
            self.name: Estimate(
                estimators.ratio(test, probe, train["loss"]), estimators.ratio(test, probe, train["error"])
            )
        }

    def measure_state(self) -> dict[str, Any]:
        """What a resumed run needs (Python scalars, lists, dicts and tensors only)."""
        return {}

    def load_measure_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`measure_state`."""


MEASURES: dict[str, type[MeasureCallback]] = {}


def register_measure(cls: type[MeasureCallback]) -> type[MeasureCallback]:
    """Class decorator adding a measure to those :class:`GeneralizationMonitor` runs by default."""
    MEASURES[cls.name] = cls
    return cls


class TimeRatioMixin:
    """Previous-epoch state of the estimators that compare θ^{(t−1)} with θ^{(t)} (DESIGN §4)."""

    _previous: dict[str, float] | None = None

    def _advance(self, current: dict[str, Tensor]) -> dict[str, Tensor] | None:
        """Return the previous epoch's values (None at the first epoch) and remember ``current``."""
        previous = self._previous
        self._previous = {k: float(v) for k, v in current.items()}
        if previous is None:
            return None
        device = next(iter(current.values())).device
        return {k: torch.tensor(v, dtype=torch.float64, device=device) for k, v in previous.items()}

    def measure_state(self) -> dict[str, Any]:
        return {"previous": self._previous}

    def load_measure_state(self, state: dict[str, Any]) -> None:
        self._previous = state.get("previous")
