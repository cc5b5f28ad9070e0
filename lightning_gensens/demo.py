"""The demo: the papers' 4×100 ReLU MLP on an embedded dataset, with every applicable measure."""

from __future__ import annotations

import argparse
import os
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger

from lightning_gensens.callbacks import MEASURES, GeneralizationMonitor
from lightning_gensens.data import DATASETS, ArrayDataModule
from lightning_gensens.models import Classifier, mlp
from lightning_gensens.plotting import plot_predictions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", choices=DATASETS, default="digits",
                        help="embedded dataset: scikit-learn's load_digits (70/30 split) or MNIST-1D (default: digits)")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs (default: 30)")
    parser.add_argument("--batch-size", type=int, default=64, help="SGD batch size (default: 64, as the papers)")
    parser.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (default: 0.05)")
    parser.add_argument("--weight-decay", type=float, default=5e-4, help="SGD weight decay (default: 5e-4)")
    parser.add_argument("--probe-size", type=int, default=2048,
                        help="training samples in the fixed probe (default: 2048, capped by the training set)")
    parser.add_argument("--measures", nargs="+", choices=sorted(MEASURES), default=None, metavar="MEASURE",
                        help=f"measures to run (default: every applicable one): {', '.join(sorted(MEASURES))}")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order and probe")
    parser.add_argument("--out", default="gensens_output",
                        help="output folder for CSV logs, the MAE table and the plot (default: gensens_output)")
    parser.add_argument("--wandb", action="store_true",
                        help="also log to Weights & Biases (offline unless you are logged in)")
    parser.add_argument("--no-progress", action="store_true", help="hide Lightning's progress bar")


class EpochPrinter(Callback):
    """Prints one line per validation epoch: actual test loss and each estimator's prediction."""

    def __init__(self, prefix: str = "gensens") -> None:
        self.prefix = prefix

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        actual = metrics.get(f"{self.prefix}/test_loss")
        if trainer.sanity_checking or actual is None or not trainer.is_global_zero:
            return
        preds = sorted((k[len(self.prefix) + 1 : -len("/pred_test_loss")], float(v)) for k, v in metrics.items()
                       if k.startswith(self.prefix) and k.endswith("/pred_test_loss"))
        line = f"epoch {trainer.current_epoch:3d}  test loss {float(actual):.4f}  predicted: " + ", ".join(
            f"{name} {value:.4f}" for name, value in preds)
        bar = trainer.progress_bar_callback
        (bar.print if isinstance(bar, TQDMProgressBar) and bar.is_enabled else print)(line)


def _wandb_logger(out: str, name: str) -> Logger:
    from lightning.pytorch.loggers import WandbLogger

    netrc = os.path.expanduser("~/.netrc")
    logged_in = bool(os.environ.get("WANDB_API_KEY")) or (
        os.path.exists(netrc) and "api.wandb.ai" in open(netrc).read())
    return WandbLogger(project="lightning-gensens", name=name, save_dir=out, offline=not logged_in)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train with the monitor; write CSV logs, the MAE table and the plot into ``args.out``."""
    L.seed_everything(args.seed, verbose=False)
    data = ArrayDataModule(args.dataset, batch_size=args.batch_size, seed=args.seed)
    model = Classifier(mlp(data.num_features, data.num_classes), lr=args.lr, weight_decay=args.weight_decay)
    monitor = GeneralizationMonitor(measures=args.measures, probe_size=args.probe_size, seed=args.seed)
    os.makedirs(args.out, exist_ok=True)
    csv_logger = CSVLogger(args.out, name="csv")
    loggers: list[Logger] = [csv_logger] + ([_wandb_logger(args.out, f"demo-{args.dataset}")] if args.wandb else [])
    trainer = L.Trainer(max_epochs=args.epochs, callbacks=[monitor, EpochPrinter()], logger=loggers,
                        accelerator="cpu", devices=1, enable_progress_bar=not args.no_progress,
                        enable_model_summary=False, enable_checkpointing=False, log_every_n_steps=10)
    trainer.fit(model, data)
    plot = plot_predictions(monitor.history, os.path.join(args.out, "predicted_vs_actual.png"),
                            title=f"Predicted versus actual test loss — 4×100 MLP on {args.dataset}")
    print(f"\nCSV logs: {os.path.join(csv_logger.log_dir, 'metrics.csv')}\n"
          f"MAE table: {os.path.join(csv_logger.log_dir, 'gensens_mae.csv')}\nplot: {plot}")
    if args.wandb:
        import wandb

        wandb.finish()
    return {"mae_table": monitor.mae_table, "plot": plot, "history": monitor.history}
