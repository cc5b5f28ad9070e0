"""Training time with and without GeneralizationMonitor, side by side in one run, and the cost of each measure.

    python benchmarks/overhead.py [--epochs 30] [--repeats 3] [--dataset digits] [--per-measure]

Prints the median wall time of `Trainer.fit` over --repeats runs of each configuration (interleaved, so machine
noise hits all alike) and the ratio to plain training; with --per-measure also each measure alone, as added
milliseconds per measured epoch.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import lightning as L
import torch

from lightning_gensens import GeneralizationMonitor
from lightning_gensens.callbacks import MEASURES
from lightning_gensens.data import ArrayDataModule
from lightning_gensens.models import Classifier, mlp


def fit_seconds(data: ArrayDataModule, epochs: int, measures: list[str] | None, monitored: bool) -> float:
    L.seed_everything(0, verbose=False)
    model = Classifier(mlp(data.num_features, data.num_classes))
    callbacks = [GeneralizationMonitor(measures=measures)] if monitored else []
    trainer = L.Trainer(
        max_epochs=epochs,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    trainer.fit(model, data)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--per-measure", action="store_true", help="also time each measure alone")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    data = ArrayDataModule(args.dataset)
    configs: dict[str, tuple[list[str] | None, bool]] = {
        "plain training": (None, False),
        "GeneralizationMonitor (all)": (None, True),
    }
    if args.per_measure:
        configs.update({f"  {name} alone": ([name], True) for name in MEASURES})
    fit_seconds(data, 1, None, True)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.repeats):
        for name, (measures, monitored) in configs.items():
            times[name].append(fit_seconds(data, args.epochs, measures, monitored))
    plain = statistics.median(times["plain training"])
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dataset} "
        f"({len(data.train_set)} train / {len(data.val_set)} validation samples), MLP 4x100, {args.epochs} epochs, "
        f"median of {args.repeats}"
    )
    print(f"{'configuration':<34}{'time':>9}{'ratio':>8}{'ms/epoch added':>16}")
    for name, values in times.items():
        t = statistics.median(values)
        print(f"{name:<34}{t:8.2f}s{t / plain:7.2f}x{(t - plain) / args.epochs * 1000:15.1f}")


if __name__ == "__main__":
    main()
