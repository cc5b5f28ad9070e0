"""Training a small family of MLPs (width × depth × seed) with the monitor attached, for
:func:`~lightning_gensens.sweep.evaluate`; ``python -m lightning_gensens sweep`` trains one and prints the table."""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import itertools
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from lightning_gensens import GeneralizationMonitor
from lightning_gensens.data import DATASETS, ArrayDataModule
from lightning_gensens.models import Classifier, mlp
from lightning_gensens.sweep.evaluation import Run, SweepRow, evaluate, format_table

_LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning")


def train_family(
    dataset: str = "digits",
    widths: Sequence[int] = (16, 64, 256),
    depths: Sequence[int] = (1, 2, 3),
    seeds: Sequence[int] = (0, 1),
    epochs: int = 30,
    probe_size: int = 256,
    measure_every: int = 10,
    lr: float = 0.05,
    weight_decay: float = 5e-4,
    batch_size: int = 64,
    num_threads: int | None = 1,
    quiet: bool = True,
    progress: Callable[[Run, float], None] | None = None,
) -> list[Run]:
    """Train every MLP of the grid ``widths × depths × seeds`` with a monitor attached; return their runs.

    Each model is :func:`~lightning_gensens.models.mlp` with ``depth`` hidden ReLU layers of ``width`` units,
    trained by SGD (:class:`~lightning_gensens.models.Classifier`) on the fixed train/test split of
    :class:`~lightning_gensens.data.ArrayDataModule` for ``epochs`` epochs on the CPU, with
    ``GeneralizationMonitor(probe_size=probe_size, seed=seed)``. ``seed`` seeds initialisation, data order and the
    probe; the global torch RNG is restored afterwards. The monitor measures at every validation epoch, which
    runs every ``measure_every`` epochs (and always after the last one), so the last history row is the final
    model. The run's hyperparameters are ``{"width", "depth", "seed"}``.

    The defaults (18 models, 3 measured epochs each) train in well under a minute on two CPU cores.

    Args:
        num_threads: torch's intra-op CPU threads while training, restored afterwards; one thread is the
            fastest for such small MLPs and keeps its speed on a busy machine. ``None`` leaves the setting.
        quiet: silence Lightning's info logging, its data-loader warnings and the monitor's end-of-fit table
            while training (the logger levels are restored afterwards).
        progress: called with each finished run and its training seconds.
    """
    if epochs < 1 or measure_every < 1:
        raise ValueError(f"epochs and measure_every must be positive, got {epochs} and {measure_every}.")
    if not widths or not depths or not seeds:
        raise ValueError("train_family needs at least one width, depth and seed.")
    data = ArrayDataModule(dataset, batch_size=batch_size, seed=0)
    monitor_kwargs: dict[str, Any] = {"probe_size": probe_size}
    if "budget" in inspect.signature(GeneralizationMonitor).parameters:
        monitor_kwargs["budget"] = None
    runs = []
    with _quiet_lightning(quiet), _torch_threads(num_threads):
        for width, depth, seed in itertools.product(widths, depths, seeds):
            start = time.perf_counter()
            monitor = GeneralizationMonitor(seed=seed, **monitor_kwargs)
            trainer = L.Trainer(
                max_epochs=epochs,
                accelerator="cpu",
                devices=1,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                num_sanity_val_steps=0,
                callbacks=[monitor, _MeasureSchedule(epochs, measure_every)],
            )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = Classifier(mlp(data.num_features, data.num_classes, [width] * depth), lr, weight_decay)
                with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
                    trainer.fit(model, data)
            run_ = Run(
                history=[dict(r) for r in monitor.history],
                hparams={"width": width, "depth": depth, "seed": seed},
                name=f"w{width}-d{depth}-s{seed}",
            )
            runs.append(run_)
            if progress is not None:
                progress(run_, time.perf_counter() - start)
    return runs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``sweep`` sub-command's options."""
    parser.add_argument("--dataset", choices=DATASETS, default="digits", help="embedded dataset (default: digits)")
    parser.add_argument(
        "--widths", type=int, nargs="+", default=[16, 64, 256], help="hidden widths of the MLPs (default: 16 64 256)"
    )
    parser.add_argument(
        "--depths", type=int, nargs="+", default=[1, 2, 3], help="numbers of hidden layers (default: 1 2 3)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds per configuration (default: 0 1)")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs per model (default: 30)")
    parser.add_argument(
        "--measure-every",
        type=int,
        default=10,
        help="validate and measure every N epochs, always including the last (default: 10)",
    )
    parser.add_argument(
        "--probe-size", type=int, default=256, help="training samples in the monitor's probe (default: 256)"
    )
    parser.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (default: 0.05)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads while training (default: 1, fastest for small MLPs)"
    )
    parser.add_argument(
        "--axes",
        nargs="+",
        default=None,
        choices=["width", "depth", "seed"],
        help="hyperparameter axes of the granulated Kendall coefficient (default: every axis that varies)",
    )


def run(args: argparse.Namespace) -> list[SweepRow]:
    """Train the family of ``args``, print one line per model and the table; return the table's rows."""
    n = len(args.widths) * len(args.depths) * len(args.seeds)
    print(f"training {n} MLPs on {args.dataset} for {args.epochs} epochs each")

    def report(r: Run, seconds: float) -> None:
        test, train = r.value("gensens/test_loss"), r.value("gensens/train_loss")
        print(f"  {r.name:<16} train loss {train:.4f}  test loss {test:.4f}  gap {test - train:+.4f}  {seconds:.1f}s")

    start = time.perf_counter()
    runs = train_family(
        args.dataset,
        widths=args.widths,
        depths=args.depths,
        seeds=args.seeds,
        epochs=args.epochs,
        probe_size=args.probe_size,
        measure_every=args.measure_every,
        lr=args.lr,
        num_threads=args.threads,
        progress=report,
    )
    rows = evaluate(runs, axes=args.axes)
    print(f"\nrank correlation with generalization over {n} models ({time.perf_counter() - start:.0f}s)")
    print(format_table(rows))
    return rows


class _MeasureSchedule(Callback):
    """Validate (and so measure) at epochs ``last, last - every, …`` only: always after the last epoch.

    Lightning's ``check_val_every_n_epoch`` counts from the first epoch, which would skip the last one when it is
    not a multiple; this sets it per epoch instead.
    """

    def __init__(self, epochs: int, every: int) -> None:
        self.epochs, self.every = epochs, every

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        measured = (self.epochs - 1 - trainer.current_epoch) % self.every == 0
        trainer.check_val_every_n_epoch = 1 if measured else self.epochs + 1


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Use ``n`` intra-op CPU threads (``None``: leave as is); restore the previous number on exit."""
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def _quiet_lightning(quiet: bool) -> Iterator[None]:
    """Raise Lightning's loggers to WARNING and ignore its data-loader hints; restore both on exit."""
    if not quiet:
        yield
        return
    loggers = [logging.getLogger(n) for n in _LIGHTNING_LOGGERS]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
        with warnings.catch_warnings():
            for message in (".*does not have many workers.*", ".*The number of training batches.*", ".*LeafSpec.*"):
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
