"""Training time of the demo with and without GeneralizationMonitor, side by side in one run.

    python benchmarks/overhead.py [--epochs 30] [--repeats 3] [--dataset digits]

Prints the median wall time of `Trainer.fit` over --repeats runs of each configuration (interleaved, so machine
noise hits both alike) and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import lightning as L
import torch

from lightning_gensens import GeneralizationMonitor
from lightning_gensens.data import ArrayDataModule
from lightning_gensens.models import Classifier, mlp


def fit_seconds(data: ArrayDataModule, epochs: int, measures: list[str] | None, monitored: bool) -> float:
    L.seed_everything(0, verbose=False)
    model = Classifier(mlp(data.num_features, data.num_classes))
    callbacks = [GeneralizationMonitor(measures=measures)] if monitored else []
    trainer = L.Trainer(max_epochs=epochs, callbacks=callbacks, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1,
                        num_sanity_val_steps=0)
    start = time.perf_counter()
    trainer.fit(model, data)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--measures", nargs="+", default=None, help="default: every applicable measure")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    data = ArrayDataModule(args.dataset)
    fit_seconds(data, 1, args.measures, True)  # warm-up
    plain, monitored = [], []
    for _ in range(args.repeats):
        plain.append(fit_seconds(data, args.epochs, args.measures, False))
        monitored.append(fit_seconds(data, args.epochs, args.measures, True))
    p, m = statistics.median(plain), statistics.median(monitored)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dataset}, {args.epochs} epochs, "
          f"median of {args.repeats}")
    print(f"{'plain training':<28}{p:8.2f} s")
    print(f"{'with GeneralizationMonitor':<28}{m:8.2f} s")
    print(f"{'ratio (monitored / plain)':<28}{m / p:8.2f} x")


if __name__ == "__main__":
    main()
