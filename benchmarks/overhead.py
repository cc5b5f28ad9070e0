"""What GeneralizationMonitor costs: training time with no monitor, the default monitor (``budget=0.1``) and the
unbudgeted monitor (``budget=None``) side by side on four tiny CPU workloads, what the budget let run, and the
peak memory of each as the training set grows tenfold.

    python benchmarks/overhead.py [--quick] [--epochs 20] [--repeats 5] [--workloads demo,mnist1d,resnet,bert]
                                  [--threads 1] [--out benchmarks/results/overhead.md]

Workloads (no download):

- demo: the papers' 4x100 MLP (SGD lr 0.05, weight decay 5e-4, batch 64) on scikit-learn's digits;
- mnist1d: the same MLP on MNIST-1D;
- resnet: a residual CNN (one in-place ReLU module applied three times, BatchNorm, a skip) on digits as 1x8x8;
- bert: ``BertForSequenceClassification`` from a config (2 layers, hidden 64, 4 heads, sequences of 32 tokens),
  Adam lr 1e-3, on synthetic token classification (is token 7 in the sequence?), 2,048 train / 512 val.

Each fit runs ``--epochs`` epochs; the configurations are repeated ``--repeats`` times interleaved (plain, default,
none, plain, default, none, ...) after one warm-up fit per workload, and the median wall time of ``Trainer.fit`` is
reported with its ratio to plain training. For the default monitor it also reports how many epochs each estimator
logged a ``pred_test_loss``, each measure's runs and seconds (``monitor.cost_table``), and where the added time
went: measures, the monitor's own work inside its measuring runs (the probe's forward passes, the captures), and
what lies outside them (hooks during training/validation, logging). Peak memory (the RSS high-water mark of the
fit) is taken in a fresh subprocess per configuration (default monitor, ``budget=None``, plain training) on the demo
workload with its training set replicated 2x and 20x with small noise (both above the 2,048-sample probe, so that
the monitor's own data is the same size).

``--quick`` is a smoke test: 1 repeat, 3 epochs, peak memory of the default monitor only. Torch runs ``--threads``
intra-op threads (1 by default: on a shared machine, OpenMP threads spinning on a descheduled sibling made 2-thread
runs up to 40x slower).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from lightning_gensens import GeneralizationMonitor
from lightning_gensens.data import ArrayDataModule, TokenData
from lightning_gensens.models import Classifier, ResidualNet, mlp

PREFIX = "gensens"
CONFIGS = ("plain", "default", "none")
LABELS = {"plain": "plain training", "default": "`GeneralizationMonitor()`", "none": "`budget=None`"}
GOAL_RATIO, GOAL_ESTIMATORS = 1.10, 5
SCALES = (2, 20)
"""Replications of the digits training set in the memory measurements."""


# -- workloads ----------------------------------------------------------------------------------------------------
BERT = dict(vocab=50, length=32, hidden=64, layers=2, heads=4, intermediate=128, train=2048, val=512, batch=32)


class TokenDataModule(L.LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        self.train_set = TokenData(BERT["train"], BERT["length"], BERT["vocab"], seed=0)
        self.val_set = TokenData(BERT["val"], BERT["length"], BERT["vocab"], seed=1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=BERT["batch"], shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)


class SmallBert(L.LightningModule):
    """``BertForSequenceClassification`` from a config, called as users do: ``self(**batch)`` returning a
    ModelOutput (``tests/callbacks/real_models.py::TinyBert``, wider and deeper so that training is not trivial)."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertForSequenceClassification

        config = BertConfig(
            vocab_size=BERT["vocab"],
            hidden_size=BERT["hidden"],
            num_hidden_layers=BERT["layers"],
            num_attention_heads=BERT["heads"],
            intermediate_size=BERT["intermediate"],
            max_position_embeddings=BERT["length"],
            num_labels=2,  # type: ignore[call-arg]  # a PretrainedConfig keyword
        )
        self.model = BertForSequenceClassification(config)

    def forward(self, **batch: Tensor) -> Any:
        return self.model(**batch)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self(**batch).loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.log("val_loss", self(**batch).loss, batch_size=batch["labels"].shape[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


@dataclass
class Workload:
    name: str
    description: str
    data: Callable[[], L.LightningDataModule]
    model: Callable[[L.LightningDataModule], L.LightningModule]


def _mlp(data: Any) -> L.LightningModule:
    return Classifier(mlp(data.num_features, data.num_classes))


WORKLOADS = {
    "demo": Workload("demo", "4x100 MLP on digits", lambda: ArrayDataModule("digits"), _mlp),
    "mnist1d": Workload("mnist1d", "4x100 MLP on MNIST-1D", lambda: ArrayDataModule("mnist1d"), _mlp),
    "resnet": Workload(
        "resnet",
        "residual CNN (width 4) on digits 1x8x8",
        lambda: ArrayDataModule("digits", image=True),
        lambda data: Classifier(ResidualNet()),
    ),
    "bert": Workload(
        "bert",
        f"BERT {BERT['layers']}x{BERT['hidden']} ({BERT['heads']} heads, {BERT['length']} tokens) on token data",
        TokenDataModule,
        lambda data: SmallBert(),
    ),
}


def sizes(data: Any) -> tuple[int, int, int]:
    """Train samples, validation samples, training steps per epoch."""
    loader = data.train_dataloader()
    return len(data.train_set), len(data.val_set), len(loader)


# -- one fit ------------------------------------------------------------------------------------------------------
@dataclass
class Fit:
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    cost_table: list[dict[str, Any]] = field(default_factory=list)
    measuring: float = math.nan
    """Wall time of the monitor's measuring runs (its budget's account)."""


def fit(workload: Workload, data: L.LightningDataModule, epochs: int, config: str) -> Fit:
    L.seed_everything(0, verbose=False)
    model = workload.model(data)
    monitor = None if config == "plain" else GeneralizationMonitor(budget=0.1 if config == "default" else None)
    trainer = L.Trainer(
        max_epochs=epochs,
        callbacks=[monitor] if monitor else [],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
        devices=1,
    )
    start = time.perf_counter()
    trainer.fit(model, data)
    seconds = time.perf_counter() - start
    if monitor is None:
        return Fit(seconds)
    measuring = getattr(getattr(monitor, "budget", None), "measuring", math.nan)
    return Fit(seconds, [dict(row) for row in monitor.history], list(monitor.cost_table), float(measuring))


def estimator_counts(history: list[dict[str, float]]) -> dict[str, int]:
    """Per estimator, the measured epochs in which it logged a predicted test loss."""
    counts: dict[str, int] = defaultdict(int)
    suffix = "/pred_test_loss"
    for row in history:
        for key in row:
            if key.startswith(f"{PREFIX}/") and key.endswith(suffix) and not key.startswith(f"{PREFIX}/pool/"):
                counts[key[len(PREFIX) + 1 : -len(suffix)]] += 1
    return dict(counts)


# -- peak memory --------------------------------------------------------------------------------------------------
def memory_child(scale: int, config: str, epochs: int, threads: int) -> dict[str, float]:
    """In a fresh process: the demo workload's fit with its training set replicated ``scale`` times."""
    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore")
    data = ArrayDataModule("digits")
    if scale != 1:
        x, y = data.train_set.tensors
        g = torch.Generator().manual_seed(0)
        x = x.repeat(scale, 1) + 0.01 * torch.randn(x.shape[0] * scale, x.shape[1], generator=g)
        data.train_set = TensorDataset(x, y.repeat(scale))
    imports = _maxrss_mib()
    gc.collect()
    reset = _reset_peak()
    before = _rss_mib()
    result = fit(WORKLOADS["demo"], data, epochs, config)
    peak = _maxrss_mib()
    counts = estimator_counts(result.history)
    return {
        "scale": scale,
        "train": len(data.train_set),
        "imports_mib": imports,
        "before_mib": before,
        "peak_mib": peak,
        "reset": reset,
        "seconds": result.seconds,
        "estimators_twice": sum(c >= 2 for c in counts.values()),
        "full_runs": sum(r["runs"] for r in result.cost_table),
    }


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":")) / 1024


def _maxrss_mib() -> float:
    """This process's peak RSS: VmHWM where there is /proc (``ru_maxrss`` of a child started from a big parent
    reports at least the parent's RSS at fork, which survives exec)."""
    try:
        return _status_mib("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mib() -> float:
    try:
        return _status_mib("VmRSS")
    except OSError:
        return math.nan


def _reset_peak() -> bool:
    """Reset the process's RSS high-water mark to its current RSS (Linux), so that the peak is the fit's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_memory(epochs: int, threads: int, configs: tuple[str, ...]) -> list[dict[str, float]]:
    rows = []
    for config in configs:
        for scale in SCALES:
            command = [sys.executable, __file__, "--memory-child", f"{scale},{config}"]
            command += ["--epochs", str(epochs), "--threads", str(threads)]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            row["config"] = config
            rows.append(row)
            print(f"  memory: {config} x{scale}: peak {row['peak_mib']:.0f} MiB", flush=True)
    return rows


# -- report -------------------------------------------------------------------------------------------------------
def fmt_s(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds < 100 else f"{seconds:.0f} s"


def report(
    args: argparse.Namespace,
    info: dict[str, tuple[int, int, int]],
    fits: dict[str, dict[str, list[Fit]]],
    memory: list[dict[str, float]],
    wall: float,
) -> str:
    lines = [
        "# GeneralizationMonitor overhead",
        "",
        f"`python benchmarks/overhead.py {' '.join(sys.argv[1:])}`".replace(" `", "`"),
        "",
        f"torch {torch.__version__}, lightning {L.__version__}, Python {platform.python_version()}, "
        f"{torch.get_num_threads()} torch thread(s) on a machine with {_cpus()} CPU cores shared with other jobs; "
        f"{args.epochs} epochs per fit, median of {args.repeats} interleaved repeat(s) after a warm-up fit; "
        f"benchmark wall time {wall / 60:.1f} min.",
        "",
        "## Training time",
        "",
        "| workload | train / val, steps per epoch | plain training | `GeneralizationMonitor()` | ratio | "
        "ratio per repeat | estimators logged ≥ 2× | `budget=None` | ratio | goal (≤ 1.10×, ≥ 5 estimators) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in fits.items():
        train, val, steps = info[name]
        t = {c: statistics.median(f.seconds for f in runs[c]) for c in CONFIGS}
        twice = [sum(c >= 2 for c in estimator_counts(f.history).values()) for f in runs["default"]]
        ratio = t["default"] / t["plain"]
        paired = [d.seconds / p.seconds for p, d in zip(runs["plain"], runs["default"], strict=True)]
        met = ratio <= GOAL_RATIO and statistics.median(twice) >= GOAL_ESTIMATORS
        lines.append(
            f"| {name}: {WORKLOADS[name].description} | {train:,} / {val:,}, {steps} | {fmt_s(t['plain'])} | "
            f"{fmt_s(t['default'])} | {ratio:.2f}× | {'/'.join(f'{r:.2f}' for r in paired)} | "
            f"{'/'.join(map(str, twice))} | {fmt_s(t['none'])} | "
            f"{t['none'] / t['plain']:.2f}× | {'met' if met else 'not met'} |"
        )
    lines += [
        "",
        "*ratio*: of the medians; *ratio per repeat*: each repeat's default fit over the plain fit run just before "
        "it, which shows the machine's noise. Estimators logged ≥ 2×: per repeat, the estimators whose "
        "`pred_test_loss` was logged in at least two of the epochs.",
        "",
        "## Where the time goes",
        "",
        "Medians over repeats. *added*: fit time minus plain training's. *measuring*: the wall time of the "
        "monitor's measuring runs as its budget accounts them; *measures*: the sum of `cost_table` seconds; "
        "*monitor's own work*: measuring minus measures (the probe's forward passes, the captures, bookkeeping); "
        "*outside measuring*: added minus measuring (hooks on every forward, logging, setup, the probe's draw). "
        "*final overhead*: the last `gensens/overhead` logged (measuring / training time).",
        "",
        "| workload | monitor | added | measuring | measures | monitor's own work | outside measuring | "
        "final overhead | top measure (share of measures) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in fits.items():
        plain = statistics.median(f.seconds for f in runs["plain"])
        for config in ("default", "none"):
            fs = runs[config]
            added = statistics.median(f.seconds for f in fs) - plain
            measuring = statistics.median(f.measuring for f in fs)
            measures = statistics.median(sum(r["seconds"] for r in f.cost_table) for f in fs)
            final = statistics.median(
                float(f.history[-1].get(f"{PREFIX}/overhead", math.nan)) if f.history else math.nan for f in fs
            )
            per_measure: dict[str, list[float]] = defaultdict(list)
            for f in fs:
                for r in f.cost_table:
                    per_measure[r["measure"]].append(r["seconds"])
            top = max(per_measure, key=lambda m: statistics.median(per_measure[m])) if per_measure else "—"
            share = statistics.median(per_measure[top]) / measures if per_measure and measures > 0 else math.nan
            lines.append(
                f"| {name} | {LABELS[config]} | {fmt_s(added)} | {fmt_s(measuring)} | {fmt_s(measures)} | "
                f"{fmt_s(measuring - measures)} | {fmt_s(added - measuring)} | {final:.3f} | {top} ({share:.0%}) |"
            )
    lines += ["", "## What the default monitor ran", ""]
    for name, runs in fits.items():
        fs = runs["default"]
        lines += [
            f"### {name}",
            "",
            "Per repeat: runs of each measure (`cost_table`), its seconds in all (median), and with "
            "`budget=None` for comparison (median seconds per run).",
            "",
            "| measure | runs | seconds | s per run | `budget=None`: s per run |",
            "|---|---|---|---|---|",
        ]
        tables = [{r["measure"]: r for r in f.cost_table} for f in fs]
        none = defaultdict(list)
        for f in runs["none"]:
            for r in f.cost_table:
                none[r["measure"]].append(r["seconds_per_run"])
        names = sorted({m for t in tables for m in t} | set(none), key=lambda m: -statistics.median(none[m] or [0]))
        for m in names:
            runs_per_repeat = "/".join(str(t[m]["runs"]) if m in t else "0" for t in tables)
            seconds = statistics.median(t[m]["seconds"] if m in t else 0.0 for t in tables)
            per_run = (
                statistics.median(t[m]["seconds_per_run"] for t in tables if m in t)
                if any(m in t for t in tables)
                else math.nan
            )
            none_run = statistics.median(none[m]) if none[m] else math.nan
            lines.append(f"| {m} | {runs_per_repeat} | {seconds:.3f} | {per_run:.4f} | {none_run:.4f} |")
        counts = [estimator_counts(f.history) for f in fs]
        estimators = sorted(
            {e for c in counts for e in c}, key=lambda e: (-statistics.median(c.get(e, 0) for c in counts), e)
        )
        lines += [
            "",
            f"Epochs in which each estimator logged `pred_test_loss` (of {args.epochs}), per repeat:",
            "",
            "| estimator | epochs logged |",
            "|---|---|",
            *(f"| {e} | {'/'.join(str(c.get(e, 0)) for c in counts)} |" for e in estimators),
            "",
        ]
    if memory:
        lines += [
            "## Peak memory",
            "",
            f"Demo workload, one fresh process per row; the training set is the digits training set replicated "
            f"{SCALES[0]} and {SCALES[1]} times with N(0, 0.01²) noise, both more than the 2,048 samples of the probe. "
            "`budget=None` does the same work at both sizes; the default monitor measures more often in the longer "
            "fit, which runs more of its measures. *imports*: max RSS before the fit (Python, torch, Lightning, data); "
            "*RSS before fit*: resident memory when `trainer.fit` starts, after the high-water mark was reset to it "
            "(`/proc/self/clear_refs`); *peak in fit*: the high-water mark after the fit; *fit's own*: their "
            "difference.",
            "",
            "| monitor | train samples | imports | RSS before fit | peak in fit | fit's own | fit time | "
            "measure runs | estimators logged ≥ 2× |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in memory:
            lines.append(
                f"| {LABELS[str(row['config'])]} | {int(row['train']):,} | {row['imports_mib']:.0f} MiB | "
                f"{row['before_mib']:.0f} MiB | {row['peak_mib']:.0f} MiB | "
                f"{row['peak_mib'] - row['before_mib']:.1f} MiB | {fmt_s(row['seconds'])} | "
                f"{int(row['full_runs'])} | {int(row['estimators_twice'])} |"
            )
        by = {(str(r["config"]), int(r["scale"])): r for r in memory}
        lines.append("")
        for config in CONFIGS:
            if (config, SCALES[0]) in by and (config, SCALES[1]) in by:
                one, ten = by[(config, SCALES[0])], by[(config, SCALES[1])]
                own1, own10 = one["peak_mib"] - one["before_mib"], ten["peak_mib"] - ten["before_mib"]
                lines.append(
                    f"- {LABELS[config]}, {SCALES[1] // SCALES[0]}× the training data: peak in fit "
                    f"{one['peak_mib']:.0f} → {ten['peak_mib']:.0f} MiB ({ten['peak_mib'] / one['peak_mib']:.2f}×); "
                    f"the fit's own {own1:.1f} → {own10:.1f} MiB ({own10 / own1 if own1 > 0 else math.nan:.2f}×)."
                    + ("" if one["reset"] else " (The high-water mark could not be reset: peaks include imports.)")
                )
    return "\n".join(lines) + "\n"


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


# -- main ---------------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: 1 repeat, 3 epochs, memory of the default monitor only"
    )
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated, of {list(WORKLOADS)}")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "overhead.md"))
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.epochs = 1, 3
    if args.memory_child:
        scale, config = args.memory_child.split(",")
        print(json.dumps(memory_child(int(scale), config, args.epochs, args.threads)))
        return
    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workloads {unknown}; choose from {list(WORKLOADS)}")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    for logger in ("lightning.pytorch", "lightning.fabric", "lightning", "transformers"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    start = time.perf_counter()
    info: dict[str, tuple[int, int, int]] = {}
    fits: dict[str, dict[str, list[Fit]]] = {}
    for name in names:
        workload = WORKLOADS[name]
        data = workload.data()
        info[name] = sizes(data)
        fit(workload, data, 1, "default")  # warm-up: imports, allocator, first-call paths
        fits[name] = {c: [] for c in CONFIGS}
        for repeat in range(args.repeats):
            for config in CONFIGS:
                result = fit(workload, data, args.epochs, config)
                fits[name][config].append(result)
                print(f"{name} repeat {repeat + 1} {config}: {result.seconds:.2f} s", flush=True)
    configs = ("default",) if args.quick else ("default", "none", "plain")
    memory = [] if args.no_memory else measure_memory(args.epochs, args.threads, configs)
    text = report(args, info, fits, memory, time.perf_counter() - start)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
