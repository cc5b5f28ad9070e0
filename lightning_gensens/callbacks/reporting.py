"""What the monitor reports: running MAE of every estimator, the per-run history, and the end-of-fit table with its
sinks (Lightning's rank-zero log, CSV and PNG files, Weights & Biases, TensorBoard, MLflow)."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from torch import Tensor

from lightning_gensens import estimators
from lightning_gensens.callbacks.keys import FINAL_MAE, MAE, Keys, predicted
from lightning_gensens.callbacks.tables import MIN_SCORED, format_table, markdown_table
from lightning_gensens.measures import Estimate, Trivial
from lightning_gensens.plotting import ACTUAL, PNG, predictions_figure, shown_series

__all__ = ["FIGURE_SECONDS", "MIN_SCORED", "Report", "format_table", "markdown_table"]

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MAX_HISTORY = 100_000
FIGURE, TABLE = "predicted_vs_actual", "mae_table"
FIGURE_SECONDS = 0.3
"""What drawing and writing the figure costs at most (0.25–0.45 s on 2 busy CPU cores): drawn under a budget only
where the allowance left at the end of the fit covers it."""
"""Names of the figure and of the MAE table in the loggers and the log directory."""
TRIVIAL = Trivial.name
"""The estimator every skill is measured against."""


@dataclass
class _Errors:
    """One estimator's absolute errors on one quantity, per scored run. The values are identical on every rank
    (computed from reduced states), so there is nothing to synchronise."""

    by_run: dict[int, float] = field(default_factory=dict)

    def mean(self, runs: set[int] | None = None) -> float:
        """The mean over ``runs`` (all scored runs by default); NaN over none."""
        values = list(self.by_run.values()) if runs is None else [v for r, v in self.by_run.items() if r in runs]
        return sum(values) / len(values) if values else math.nan


def _skill(mae: float, baseline: float | None, trivial: bool) -> float:
    """:func:`~lightning_gensens.estimators.skill`, 0 for trivial itself."""
    if trivial and math.isfinite(mae) and baseline is not None and math.isfinite(baseline):
        return 0.0
    return math.nan if baseline is None else estimators.skill(mae, baseline)


def _rank(row: Mapping[str, Any]) -> tuple[Any, ...]:
    """The validation rows, then each pool's; within each, rows with at least :data:`MIN_SCORED` scored runs first,
    then best first: higher skill on the loss (then on the error), lower MAE; NaN last."""
    group = row["estimator"].rpartition("/")[0]
    keys: list[Any] = [group, not row["reliable"]]
    for column in ("skill_loss", "skill_error", "mae_test_loss", "mae_test_error"):
        value = row[column]
        keys += [math.isnan(value), 0.0 if math.isnan(value) else (-value if column.startswith("skill") else value)]
    return tuple(keys)


class Report:
    """Each estimator's absolute error against the actual test loss and error per scored run, and the history of
    logged values (bounded), kept across resumes through :meth:`state_dict`."""

    def __init__(self, prefix: str) -> None:
        self.prefix, self.keys = prefix, Keys(prefix)
        self.history: list[dict[str, float]] = []
        self.errors: dict[str, dict[str, _Errors]] = {}
        self.needs_labels: dict[str, bool] = {}
        self.runs = 0
        """Runs recorded so far: the index of the run being scored."""
        self._wandb_keys: set[str] = set()
        self._current: set[str] = set()
        """The keys the last run put in ``trainer.callback_metrics``."""

    def score(
        self,
        estimator: str,
        estimate: Estimate,
        actual_loss: float,
        actual_error: float,
        *,
        needs_labels: bool = False,
        scored: bool = True,
    ) -> dict[str, Tensor]:
        """Log an estimate and, when ``scored`` (not a timing run on a few samples), keep its absolute errors for the
        MAE; ``needs_labels`` says whether the estimator's measure needs labels (a column of the table). A predicted
        loss is clipped at 0 and a predicted error to [0, 1], so no number is wrong in kind."""
        predicted_loss = None if estimate.loss is None else estimate.loss.clamp_min(0.0)
        predicted_error = None if estimate.error is None else estimate.error.clamp(0.0, 1.0)
        # each value read once, then checked in Python: a tensor op per check costs more than the read
        loss = math.nan if predicted_loss is None else float(predicted_loss)
        error = math.nan if predicted_error is None else float(predicted_error)
        if predicted_loss is not None and not math.isfinite(loss):
            rank_zero_warn(f"{estimator}: the predicted test loss is not finite ({loss}); not logged this run.")
            return {}
        errors = self.errors.setdefault(estimator, {"loss": _Errors(), "error": _Errors()})
        self.needs_labels[estimator] = bool(needs_labels)
        logs: dict[str, Tensor] = {}
        if predicted_loss is not None:
            logs[self.keys.estimator(estimator, predicted("loss"))] = predicted_loss
            if scored and math.isfinite(actual_loss):
                errors["loss"].by_run[self.runs] = abs(loss - actual_loss)
                logs[self.keys.estimator(estimator, MAE)] = torch.tensor(errors["loss"].mean(), dtype=torch.float64)
        if predicted_error is not None and math.isfinite(error):
            logs[self.keys.estimator(estimator, predicted("error"))] = predicted_error
            if scored and math.isfinite(actual_error):
                errors["error"].by_run[self.runs] = abs(error - actual_error)
        return logs

    def record(self, epoch: int, logs: Mapping[str, Tensor]) -> None:
        """Keep this run's scalar values for the end-of-fit figure, the W&B chart and sweep evaluation."""
        row = {"epoch": float(epoch)}
        row.update({k: float(v) for k, v in logs.items() if v.numel() == 1})
        self.history.append(row)
        del self.history[:-MAX_HISTORY]
        self.runs += 1

    def table(self) -> list[dict[str, Any]]:
        """One row per estimator, reliable and best first (see :func:`_rank`): whether it needs labels, the MAE of its
        predicted test loss and error and its skill 1 − MAE/MAE(trivial) on each, both over the scored runs where
        trivial was scored too (comparable runs; NaN without them or when trivial's MAE is 0; exactly 0 for trivial
        itself), ``epochs`` = those runs (its own scored runs without a trivial estimator) and ``reliable`` = at
        least :data:`MIN_SCORED` of them."""
        rows = []
        for estimator, errors in self.errors.items():
            group, _, name = estimator.rpartition("/")  # a pool's rows ("pool/<name>/<estimator>") have their own
            baseline = self.errors.get(f"{group}/{TRIVIAL}" if group else TRIVIAL)
            row: dict[str, Any] = {"estimator": estimator, "needs_labels": self.needs_labels.get(estimator, False)}
            runs = 0
            for kind in ("loss", "error"):
                own = errors[kind]
                common = set(own.by_run) & set(baseline[kind].by_run) if baseline else set(own.by_run)
                mae = own.mean(common)
                base = baseline[kind].mean(common) if baseline else None
                row[f"mae_test_{kind}"] = mae
                row[f"skill_{kind}"] = _skill(mae, base, name == TRIVIAL)
                runs = max(runs, len(common))
            rows.append({**row, "epochs": runs, "reliable": runs >= MIN_SCORED})
        return sorted(rows, key=_rank)

    def state_dict(self) -> dict[str, Any]:
        return {
            "errors": {
                est: {kind: [[float(r), v] for r, v in e.by_run.items()] for kind, e in kinds.items()}
                for est, kinds in self.errors.items()
            },
            "runs": self.runs,
            "needs_labels": dict(self.needs_labels),
            "history": [dict(r) for r in self.history],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.history = [dict(r) for r in state.get("history", [])]
        self.needs_labels = {str(k): bool(v) for k, v in state.get("needs_labels", {}).items()}
        self.runs = int(state.get("runs", len(self.history)))
        self.errors = {
            est: {kind: _Errors({int(r): float(v) for r, v in pairs}) for kind, pairs in kinds.items()}
            for est, kinds in state.get("errors", {}).items()
        }  # a checkpoint of 0.2 (running sums, no runs) starts the table afresh

    def log(self, trainer: Trainer, pl_module: LightningModule, logs: Mapping[str, Tensor]) -> None:
        """Log one run's values (computed from states reduced over ranks; rank 0's timings go to the loggers).

        While fitting they go to ``trainer.callback_metrics`` (for EarlyStopping and ModelCheckpoint), replacing the
        last run's (:meth:`forget`), and straight to every logger at the step Lightning logs at, as Lightning's
        ``LearningRateMonitor`` does: ``self.log`` costs about 0.3 ms per key, which for the ~80 keys of a run is
        more than the cheap measures themselves. Under ``trainer.validate()`` they go through ``self.log``, so that
        ``validate()`` returns them."""
        self._define_wandb_step(trainer, logs)
        if trainer.state.fn != "fit":
            pl_module.log_dict(dict(logs), sync_dist=trainer.world_size > 1)
            return
        self.forget(trainer)
        trainer.callback_metrics.update(logs)
        self._current = set(logs)
        self._to_loggers(trainer, logs)

    def forget(self, trainer: Trainer) -> None:
        """Take the last run's values out of ``trainer.callback_metrics``, so that no callback compares a value
        measured at another run (a key this run does not log, or a validation run that measures nothing)."""
        if self._current:
            metrics = trainer.callback_metrics  # a property that merges on every read: read once
            for key in self._current:
                metrics.pop(key, None)
        self._current = set()

    @rank_zero_only
    def _to_loggers(self, trainer: Trainer, logs: Mapping[str, Tensor]) -> None:
        if not trainer.loggers:
            return
        scalars = {key: float(value) for key, value in logs.items()}
        # the step of Lightning's own epoch-end logging (as its LearningRateMonitor reads it), which logs `epoch`
        step = getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", trainer.global_step)
        for logger in trainer.loggers:
            # each W&B call is a row of its own, which needs the step metric our keys are plotted against
            epoch = {"epoch": float(trainer.current_epoch)} if isinstance(logger, WandbLogger) else {}
            logger.log_metrics({**scalars, **epoch}, step=step)  # saved with Lightning's own rows, as they are

    @rank_zero_only
    def _define_wandb_step(self, trainer: Trainer, logs: Mapping[str, Tensor]) -> None:
        """Plot our keys against ``epoch`` on W&B: exact names, since WandbLogger's ``*`` glob would win a glob."""
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                for key in sorted(set(logs) - self._wandb_keys):
                    logger.experiment.define_metric(key, step_metric="epoch")
                self._wandb_keys |= set(logs)

    def publish(self, trainer: Trainer, owner: str, figure: bool = True) -> list[dict[str, Any]]:
        """Write the MAE table to every sink at the end of fit, and the figure where a logger keeps it and
        ``figure`` (the budget affords it); return the table."""
        table = self.table()
        if table:
            # log_dir broadcasts, so it is read on every rank; without a logger nothing is written to disk
            self._publish(trainer, table, owner, trainer.log_dir if trainer.loggers else None, figure)
        return table

    @rank_zero_only
    def _publish(
        self, trainer: Trainer, table: list[dict[str, Any]], owner: str, log_dir: str | None, allowed: bool
    ) -> None:
        rank_zero_info(f"{owner}: mean absolute error of the predicted test loss and error\n{format_table(table)}")
        finals = {self.keys.estimator(r["estimator"], FINAL_MAE): r["mae_test_loss"] for r in table}
        # W&B draws its own chart; with any other logger the figure goes to the log dir and to the logger
        figure = None
        if not all(isinstance(logger, WandbLogger) for logger in trainer.loggers):
            if allowed:
                figure = self._figure(table, owner)
            else:
                rank_zero_info(
                    f"{owner}: the predicted-versus-actual figure (about {FIGURE_SECONDS} s) does not fit in what the "
                    "budget leaves of this fit's allowance, so it is not drawn; draw it with lightning_gensens."
                    "plotting.plot_predictions(monitor.history, path, table=monitor.mae_table), or give a larger "
                    "`budget=` (`budget=None` always draws it)."
                )
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                self._publish_wandb(logger, table, finals)
                continue
            logger.log_metrics(finals, step=trainer.global_step)
            if isinstance(logger, TensorBoardLogger):
                self._publish_tensorboard(logger, table, figure, trainer.global_step)
            elif isinstance(logger, MLFlowLogger):
                self._publish_mlflow(logger, table, figure)
        if log_dir is not None:
            os.makedirs(log_dir, exist_ok=True)
            with open(os.path.join(log_dir, self.keys.file("mae.csv")), "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(table[0]))
                writer.writeheader()
                writer.writerows(table)
            if figure is not None:
                figure.savefig(os.path.join(log_dir, self.keys.file("predicted_vs_actual.png")), **PNG)

    def _figure(self, table: list[dict[str, Any]], owner: str) -> Figure | None:
        """The predicted-versus-actual figure; None, said in one info line, where matplotlib is not installed."""
        if find_spec("matplotlib") is None:
            rank_zero_info(
                f"{owner}: matplotlib is not installed, so the predicted-versus-actual figure is skipped; "
                'pip install "lightning-gensens[demo]" to draw it.'
            )
            return None
        return predictions_figure(self.history, prefix=self.prefix, table=table)

    def _publish_tensorboard(
        self, logger: TensorBoardLogger, table: list[dict[str, Any]], figure: Figure | None, step: int
    ) -> None:
        """The figure as an image and the MAE table as Markdown text."""
        if figure is not None:
            logger.experiment.add_figure(self.keys(FIGURE), figure, step, close=False)
        logger.experiment.add_text(self.keys(TABLE), markdown_table(table), step)

    def _publish_mlflow(self, logger: MLFlowLogger, table: list[dict[str, Any]], figure: Figure | None) -> None:
        """The figure and the MAE table (as columns) as artifacts of the run."""
        client, run_id = logger.experiment, logger.run_id
        if figure is not None:
            client.log_figure(run_id, figure, self.keys.file(f"{FIGURE}.png"))
        columns = {key: [row[key] for row in table] for key in table[0]}
        client.log_table(run_id, data=columns, artifact_file=self.keys.file(f"{TABLE}.json"))

    def _publish_wandb(self, logger: WandbLogger, table: list[dict[str, Any]], finals: Mapping[str, float]) -> None:
        """One line chart of the actual test loss, trivial's and the best few estimators' predictions; the MAE
        table; the summary."""
        import wandb

        series = shown_series(self.history, self.prefix, table)
        run = logger.experiment
        run.log(
            {
                self.keys(FIGURE): wandb.plot.line_series(
                    xs=[xs for xs, _ in series.values()],
                    ys=[ys for _, ys in series.values()],
                    keys=list(series),
                    title=f"Predicted versus {ACTUAL}: trivial and the best estimators",
                    xname="epoch",
                ),
                self.keys(TABLE): wandb.Table(columns=list(table[0]), data=[list(r.values()) for r in table]),
            }
        )
        for key, value in finals.items():
            run.summary[key] = value
