"""The demos: the papers' 4×100 ReLU MLP with every applicable measure, and ranking architectures before training."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger
from torch import nn

from lightning_gensens.callbacks import GeneralizationMonitor
from lightning_gensens.callbacks.reporting import format_table
from lightning_gensens.data import DATASETS, ArrayDataModule
from lightning_gensens.measures import MEASURES
from lightning_gensens.models import Classifier, mlp, small_cnn
from lightning_gensens.plotting import plot_predictions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset",
        choices=DATASETS,
        default="digits",
        help="embedded dataset: scikit-learn's load_digits (70/30 split) or MNIST-1D (default: digits)",
    )
    parser.add_argument("--epochs", type=int, default=30, help="training epochs (default: 30)")
    parser.add_argument("--batch-size", type=int, default=64, help="SGD batch size (default: 64, as the papers)")
    parser.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (default: 0.05)")
    parser.add_argument("--weight-decay", type=float, default=5e-4, help="SGD weight decay (default: 5e-4)")
    parser.add_argument(
        "--probe-size",
        type=int,
        default=2048,
        help="training samples in the fixed probe (default: 2048, capped by the training set)",
    )
    parser.add_argument(
        "--measures",
        nargs="+",
        choices=sorted(MEASURES),
        default=None,
        metavar="MEASURE",
        help=f"measures to run (default: every applicable one): {', '.join(sorted(MEASURES))}",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order and probe")
    parser.add_argument(
        "--out",
        default="gensens_output",
        help="output folder for CSV logs, the MAE table and the plot (default: gensens_output)",
    )
    parser.add_argument(
        "--wandb", action="store_true", help="also log to Weights & Biases (offline unless WANDB_MODE=online)"
    )
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
        preds = sorted(
            (k[len(self.prefix) + 1 : -len("/pred_test_loss")], float(v))
            for k, v in metrics.items()
            if k.startswith(self.prefix) and k.endswith("/pred_test_loss")
        )
        line = f"epoch {trainer.current_epoch:3d}  test loss {float(actual):.4f}  predicted: " + ", ".join(
            f"{name} {value:.4f}" for name, value in preds
        )
        bar = trainer.progress_bar_callback
        (bar.print if isinstance(bar, TQDMProgressBar) and bar.is_enabled else print)(line)


def _wandb_logger(out: str, name: str) -> Logger:
    """A W&B logger in the mode ``WANDB_MODE`` names (offline unless it says ``online``); no credential is read."""
    from lightning.pytorch.loggers import WandbLogger

    return WandbLogger(
        project="lightning-gensens", name=name, save_dir=out, mode=os.environ.get("WANDB_MODE", "offline")
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train with the monitor; write CSV logs, the MAE table and the plot into ``args.out``."""
    L.seed_everything(args.seed, verbose=False)
    data = ArrayDataModule(args.dataset, batch_size=args.batch_size, seed=args.seed)
    model = Classifier(mlp(data.num_features, data.num_classes), lr=args.lr, weight_decay=args.weight_decay)
    # budget=None: every measure on everything every epoch, to show full curves
    monitor = GeneralizationMonitor(measures=args.measures, probe_size=args.probe_size, seed=args.seed, budget=None)
    os.makedirs(args.out, exist_ok=True)
    csv_logger = CSVLogger(args.out, name="csv")
    loggers: list[Logger] = [csv_logger] + ([_wandb_logger(args.out, f"demo-{args.dataset}")] if args.wandb else [])
    trainer = L.Trainer(
        max_epochs=args.epochs,
        callbacks=[monitor, EpochPrinter()],
        logger=loggers,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=not args.no_progress,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=10,
    )
    trainer.fit(model, data)
    plot = plot_predictions(
        monitor.history,
        os.path.join(args.out, "predicted_vs_actual.png"),
        title=f"Predicted versus actual test loss — 4×100 MLP on {args.dataset}",
        table=monitor.mae_table,
    )
    table = format_table(monitor.mae_table)
    print(f"\nGeneralizationMonitor: mean absolute error of the predicted test loss and error\n{table}")
    print(
        f"\nCSV logs: {os.path.join(csv_logger.log_dir, 'metrics.csv')}\n"
        f"MAE table: {os.path.join(csv_logger.log_dir, 'gensens_mae.csv')}\nplot: {plot}"
    )
    if args.wandb:
        import wandb

        wandb.finish()
    return {"mae_table": monitor.mae_table, "plot": plot, "history": monitor.history}


def add_rank_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", choices=DATASETS, default="digits", help="embedded dataset (default: digits)")
    parser.add_argument("--epochs", type=int, default=10, help="Adam epochs per candidate (default: 10)")
    parser.add_argument("--sigma", type=float, default=0.1, help="input noise σ of S_before (default: 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order and noise")


def candidates(num_features: int, num_classes: int, image: bool) -> dict[str, nn.Module]:
    """MLPs of several widths and depths and, for image data, small CNNs; He-normal weights, zero biases."""
    family: dict[str, nn.Module] = {
        f"mlp {depth}x{width}": mlp(num_features, num_classes, hidden=(width,) * depth)
        for depth in (2, 4)
        for width in (32, 128, 512)
    }
    if image:
        family.update({f"cnn width {w}": small_cnn(1, 8, num_classes, width=w) for w in (8, 32)})
    for model in family.values():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    return family


def run_rank(args: argparse.Namespace) -> dict[str, Any]:
    """Rank the candidates by S_before, train each briefly, and print S_before beside the test loss reached."""
    from scipy.stats import spearmanr

    from lightning_gensens.ranking import rank_architectures

    L.seed_everything(args.seed, verbose=False)
    flat = ArrayDataModule(args.dataset, seed=args.seed)
    image = ArrayDataModule(args.dataset, seed=args.seed, image=True) if args.dataset == "digits" else flat
    family = candidates(flat.num_features, flat.num_classes, image=args.dataset == "digits")
    data_for = {name: image if name.startswith("cnn") else flat for name in family}
    ranked = []
    for name, model in family.items():  # each candidate sees inputs of its own shape
        x = data_for[name].train_set.tensors[0][:512]
        ranked += rank_architectures({name: model}, x, sigma=args.sigma, seed=args.seed)
    ranked.sort(key=lambda r: r.sensitivity)
    losses = {}
    quiet = logging.getLogger("lightning.pytorch")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # one line per candidate, not eight; restored below
    try:
        for r in ranked:
            trainer = L.Trainer(
                max_epochs=args.epochs,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                accelerator="cpu",
                devices=1,
            )
            trainer.fit(Classifier(r.model, optimizer="adam", lr=1e-3, weight_decay=0.0), data_for[r.name])
            losses[r.name] = float(trainer.callback_metrics["val/loss"])
    finally:
        quiet.setLevel(level)
    print(f"\n{'rank':>4}  {'candidate':<16}{'S_before':>12}{'test loss':>12}")
    for i, r in enumerate(ranked, 1):
        print(f"{i:>4}  {r.name:<16}{r.sensitivity:>12.4g}{losses[r.name]:>12.4f}")
    rho = spearmanr([r.sensitivity for r in ranked], [losses[r.name] for r in ranked]).statistic
    print(f"\nSpearman rank correlation of S_before with the test loss after {args.epochs} epochs: {rho:.3f}")
    return {"ranked": ranked, "losses": losses, "spearman": float(rho)}
