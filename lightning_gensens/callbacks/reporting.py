"""What the monitor reports: running MAE of every estimator, the per-run history, and the end-of-fit table with its
sinks (Lightning's rank-zero log, CSV, PNG, Weights & Biases)."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from torch import Tensor
from torchmetrics.aggregation import MeanMetric

from lightning_gensens.measures import Estimate
from lightning_gensens.plotting import plot_predictions, prediction_series

MAX_HISTORY = 100_000


def _mean() -> MeanMetric:
    # fed with values already reduced across ranks, so it never syncs
    return MeanMetric(sync_on_compute=False).double()


class Report:
    """Running mean absolute error of each estimator against the actual test loss and error, and the history of
    logged values (bounded), kept across resumes through :meth:`state_dict`."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.history: list[dict[str, float]] = []
        self.mae: dict[str, dict[str, MeanMetric]] = {}
        self._wandb_keys: set[str] = set()

    def score(self, estimator: str, estimate: Estimate, actual_loss: float, actual_error: float) -> dict[str, Tensor]:
        """Log an estimate and fold its absolute errors into the running MAE."""
        p = self.prefix
        loss = float(estimate.loss)
        if not math.isfinite(loss):
            rank_zero_warn(f"{estimator}: the predicted test loss is not finite ({loss}); not logged this run.")
            return {}
        logs = {f"{p}/{estimator}/pred_test_loss": estimate.loss}
        mae = self.mae.setdefault(estimator, {"loss": _mean(), "error": _mean()})
        if math.isfinite(actual_loss):
            mae["loss"].update(abs(loss - actual_loss))
            logs[f"{p}/{estimator}/mae"] = mae["loss"].compute()
        if estimate.error is not None and math.isfinite(float(estimate.error)):
            logs[f"{p}/{estimator}/pred_test_error"] = estimate.error
            if math.isfinite(actual_error):
                mae["error"].update(abs(float(estimate.error) - actual_error))
        return logs

    def record(self, epoch: int, logs: Mapping[str, Tensor]) -> None:
        """Keep this run's scalar values for the end-of-fit figure, the W&B chart and sweep evaluation."""
        row = {"epoch": float(epoch)}
        row.update({k: float(v) for k, v in logs.items() if v.numel() == 1})
        self.history.append(row)
        del self.history[:-MAX_HISTORY]

    def table(self) -> list[dict[str, Any]]:
        """One row per estimator: MAE of the predicted test loss and error, and the runs scored."""
        rows = []
        for estimator, mae in self.mae.items():
            runs = int(mae["loss"].weight)
            rows.append(
                {
                    "estimator": estimator,
                    "mae_test_loss": float(mae["loss"].compute()) if runs else math.nan,
                    "mae_test_error": float(mae["error"].compute()) if int(mae["error"].weight) else math.nan,
                    "epochs": runs,
                }
            )
        return rows

    def state_dict(self) -> dict[str, Any]:
        return {
            "mae": {
                est: {kind: [float(m.mean_value), float(m.weight)] for kind, m in mae.items()}
                for est, mae in self.mae.items()
            },
            "history": [dict(r) for r in self.history],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.history = [dict(r) for r in state.get("history", [])]
        self.mae = {}
        for est, kinds in state.get("mae", {}).items():
            self.mae[est] = {"loss": _mean(), "error": _mean()}
            for kind, (mean, weight) in kinds.items():
                self.mae[est][kind].mean_value.fill_(mean)
                self.mae[est][kind].weight.fill_(weight)

    @rank_zero_only
    def define_wandb_step(self, trainer: Trainer, logs: Mapping[str, Tensor]) -> None:
        """Plot our keys against ``epoch`` on W&B: exact names, since WandbLogger's ``*`` glob would win a glob."""
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                for key in sorted(set(logs) - self._wandb_keys):
                    logger.experiment.define_metric(key, step_metric="epoch")
                self._wandb_keys |= set(logs)

    def publish(self, trainer: Trainer, owner: str) -> list[dict[str, Any]]:
        """Write the MAE table to every sink at the end of fit; return it."""
        table = self.table()
        if table:
            # log_dir broadcasts, so it is read on every rank; without a logger nothing is written to disk
            self._publish(trainer, table, owner, trainer.log_dir if trainer.loggers else None)
        return table

    @rank_zero_only
    def _publish(self, trainer: Trainer, table: list[dict[str, Any]], owner: str, log_dir: str | None) -> None:
        rank_zero_info(f"{owner}: mean absolute error of the predicted test loss and error\n{format_table(table)}")
        finals = {f"{self.prefix}/{r['estimator']}/final_mae": r["mae_test_loss"] for r in table}
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                self._publish_wandb(logger, table, finals)
            else:
                logger.log_metrics(finals, step=trainer.global_step)
        if log_dir is not None:
            os.makedirs(log_dir, exist_ok=True)
            with open(os.path.join(log_dir, f"{self.prefix}_mae.csv"), "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(table[0]))
                writer.writeheader()
                writer.writerows(table)
            if not all(isinstance(logger, WandbLogger) for logger in trainer.loggers):
                path = os.path.join(log_dir, f"{self.prefix}_predicted_vs_actual.png")
                plot_predictions(self.history, path, prefix=self.prefix)

    def _publish_wandb(self, logger: WandbLogger, table: list[dict[str, Any]], finals: Mapping[str, float]) -> None:
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
                f"{self.prefix}/mae_table": wandb.Table(columns=list(table[0]), data=[list(r.values()) for r in table]),
            }
        )
        for key, value in finals.items():
            run.summary[key] = value


def format_table(table: list[dict[str, Any]]) -> str:
    header = f"{'estimator':<34}{'MAE test loss':>15}{'MAE test error':>16}{'epochs':>8}"
    lines = [header, "-" * len(header)] + [
        f"{r['estimator']:<34}{r['mae_test_loss']:>15.4g}{r['mae_test_error']:>16.4g}{r['epochs']:>8}" for r in table
    ]
    return "\n".join(lines)
