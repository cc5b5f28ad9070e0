"""What GeneralizationMonitor costs as users run it (a ``CSVLogger`` attached in every configuration): training time
with no monitor, the default monitor (``budget=0.1``) and the unbudgeted monitor (``budget=None``) side by side on
five tiny CPU workloads, the monitor's per-fit fixed cost apart from what grows with the epochs, what the budget
let run, and the peak memory of each as the training set grows tenfold.

    python benchmarks/overhead.py [--quick] [--epochs 20] [--repeats 5]
                                  [--workloads demo,mnist1d,mnist1d-long,resnet,bert]
                                  [--threads 1] [--out benchmarks/results/overhead.md]

Workloads (no download): demo, the papers' 4x100 MLP (SGD lr 0.05, weight decay 5e-4, batch 64) on scikit-learn's
digits; mnist1d, the same MLP on MNIST-1D, and mnist1d-long, the same fit three times as long (60 epochs by
default); resnet, a residual CNN (one in-place ReLU module applied three times, BatchNorm, a skip) on digits as
1x8x8; bert, ``BertForSequenceClassification`` from a config (2 layers, hidden 64, 4 heads, 32 tokens), Adam lr
1e-3, on synthetic token classification (is token 7 in the sequence?), 2,048 train / 512 val.

The configurations are repeated ``--repeats`` times interleaved (plain, default, none, plain, ...) after one warm-up
fit per workload; the report (its text says what each column is) gives medians of ``Trainer.fit``'s wall time.
Peak memory is taken in a fresh subprocess per configuration on the demo workload with its training set replicated
2x and 20x. ``--quick`` is a smoke test of about a minute that writes no report unless ``--out`` is given: 1 repeat,
1 epoch (mnist1d-long 3), the demo and mnist1d-long workloads (unless ``--workloads``), peak memory of the default
monitor only.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import lightning as L
import torch
from _bert import BERT, SmallBert, TokenDataModule
from _common import (
    BREAKDOWN,
    BREAKDOWN_TEXT,
    BUDGETS,
    CONFIGS,
    LABELS,
    Fit,
    add_arguments,
    breakdown,
    command,
    configure,
    estimator_counts,
    fit,
    fmt_s,
    machine,
    markdown_table,
    measure_rows,
    measure_table,
    median,
    package_origin,
    peak_rss_mib,
    reset_peak_rss,
    rss_mib,
    write_report,
)
from torch.utils.data import TensorDataset

from lightning_gensens.data import ArrayDataModule
from lightning_gensens.models import Classifier, ResidualNet, mlp

GOAL_RATIO, GOAL_ESTIMATORS = 1.10, 5
QUICK = "demo,mnist1d-long"
SCALES = (2, 20)
"""Replications of the digits training set in the memory measurements."""
Fits = dict[str, dict[str, list[Fit]]]
"""Per workload and configuration, the fits of every repeat."""


# -- workloads ----------------------------------------------------------------------------------------------------
@dataclass
class Workload:
    description: str
    data: Callable[[], L.LightningDataModule]
    model: Callable[[L.LightningDataModule], L.LightningModule]
    epochs_factor: int = 1
    """Epochs per fit as a multiple of ``--epochs``."""


def _mlp(data: Any) -> L.LightningModule:
    return Classifier(mlp(data.num_features, data.num_classes))


MNIST1D, DIGITS = partial(ArrayDataModule, "mnist1d"), partial(ArrayDataModule, "digits")
WORKLOADS = {
    "demo": Workload("4x100 MLP on digits", DIGITS, _mlp),
    "mnist1d": Workload("4x100 MLP on MNIST-1D", MNIST1D, _mlp),
    "mnist1d-long": Workload("4x100 MLP on MNIST-1D, 3x the epochs", MNIST1D, _mlp, epochs_factor=3),
    "resnet": Workload(
        "residual CNN (width 4) on digits 1x8x8",
        partial(ArrayDataModule, "digits", image=True),
        lambda data: Classifier(ResidualNet()),
    ),
    "bert": Workload(
        f"BERT {BERT['layers']}x{BERT['hidden']} ({BERT['heads']} heads, {BERT['length']} tokens) on token data",
        TokenDataModule,
        lambda data: SmallBert(),
    ),
}


# -- peak memory --------------------------------------------------------------------------------------------------
def memory_child(scale: int, config: str, epochs: int) -> dict[str, float]:
    """In a fresh process: the demo workload's fit with its training set replicated ``scale`` times."""
    data = ArrayDataModule("digits")
    x, y = data.train_set.tensors
    g = torch.Generator().manual_seed(0)
    x = x.repeat(scale, 1) + 0.01 * torch.randn(x.shape[0] * scale, x.shape[1], generator=g)
    data.train_set = TensorDataset(x, y.repeat(scale))
    imports = peak_rss_mib()
    gc.collect()
    reset = reset_peak_rss()
    before = rss_mib()
    result = fit(partial(_mlp, data), data, epochs, config)
    row = dict(scale=scale, train=len(data.train_set), imports_mib=imports, before_mib=before, peak_mib=peak_rss_mib())
    twice = sum(c >= 2 for c in estimator_counts(result.history).values())
    full_runs = sum(r["runs"] for r in measure_rows(result.cost_table))
    return row | dict(reset=reset, seconds=result.seconds, estimators_twice=twice, full_runs=full_runs)


def measure_memory(epochs: int, threads: int, configs: tuple[str, ...]) -> list[dict[str, float]]:
    rows = []
    for config in configs:
        for scale in SCALES:
            child = [sys.executable, __file__, "--memory-child", f"{scale},{config}"]
            child += ["--epochs", str(epochs), "--threads", str(threads)]
            out = subprocess.run(child, capture_output=True, text=True, check=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            row["config"] = config
            rows.append(row)
            print(f"  memory: {config} x{scale}: peak {row['peak_mib']:.0f} MiB", flush=True)
    return rows


# -- report -------------------------------------------------------------------------------------------------------
def time_section(epochs: dict[str, int], info: dict[str, tuple[int, int, int]], fits: Fits) -> list[str]:
    header = ["workload", "train / val, steps per epoch", "epochs", "plain training", LABELS["default"], "ratio"]
    header += ["ratio per repeat", "measured − 1 / monitor's own", "estimators logged ≥ 2×", LABELS["none"], "ratio"]
    header += ["measured − 1 / monitor's own", "validation runs: added / monitor's account (points)"]
    header += [f"goal (≤ {GOAL_RATIO:.2f}×, ≥ {GOAL_ESTIMATORS} estimators)"]
    rows = []
    for name, runs in fits.items():
        train, val, steps = info[name]
        t = {c: median(f.seconds for f in runs[c]) for c in CONFIGS}
        own = {c: f"{t[c] / t['plain'] - 1:.3f} / {median(f.closing for f in runs[c]):.3f}" for c in BUDGETS}
        twice = [sum(c >= 2 for c in estimator_counts(f.history).values()) for f in runs["default"]]
        paired = [d.seconds / p.seconds for p, d in zip(runs["plain"], runs["default"], strict=True)]
        met = t["default"] / t["plain"] <= GOAL_RATIO and median(twice) >= GOAL_ESTIMATORS
        added = median(d.validation - p.validation for p, d in zip(runs["plain"], runs["default"], strict=True))
        account = median(f.runs for f in runs["default"])
        points = 100 * (added - account) / t["plain"]
        rows.append(
            (f"{name}: {WORKLOADS[name].description}", f"{train:,} / {val:,}, {steps}", epochs[name])
            + (fmt_s(t["plain"]), fmt_s(t["default"]), f"{t['default'] / t['plain']:.2f}×")
            + ("/".join(f"{r:.2f}" for r in paired), own["default"], "/".join(map(str, twice)))
            + (fmt_s(t["none"]), f"{t['none'] / t['plain']:.2f}×", own["none"])
            + (f"{added:.3f} s / {account:.3f} s ({points:+.1f})", "met" if met else "not met")
        )
    return [
        "## Training time",
        "",
        *markdown_table(header, rows),
        "",
        "*ratio*: of the medians, a `CSVLogger` attached in every configuration; *ratio per repeat*: each repeat's "
        "default fit over the plain fit run just before it, which shows the machine's noise; *measured − 1 / "
        "monitor's own*: the ratio of the medians less 1 beside the median of the monitor's own account at the end "
        "of each fit (every second its stopwatch timed: setup, hooks, runs, the fit-end report, over the training "
        "time), which should agree within the machine's noise. *validation runs: added / monitor's account*: the "
        "default fit's seconds in validation runs less the plain fit's (paired per repeat, median), where the "
        "monitor does all its work but setting up and the report, beside what its stopwatch accounts there (its "
        "time less that fixed cost), and their difference in points of plain training time: the check of the "
        "stopwatch that the noise of the training steps does not blur. Estimators logged ≥ 2×: per repeat, the "
        "estimators whose `pred_test_loss` was logged in at least two of the epochs.",
        "",
    ]


def cost_section(fits: Fits) -> list[str]:
    rows = [(name, LABELS[c]) + breakdown(runs["plain"], runs[c]) for name, runs in fits.items() for c in BUDGETS]
    header = ("workload", "monitor", *BREAKDOWN)
    text = f"Medians over repeats. {BREAKDOWN_TEXT}"
    return ["## Fixed cost, and where the time goes", "", text, "", *markdown_table(header, rows), ""]


def ran_section(epochs: dict[str, int], fits: Fits) -> list[str]:
    lines = ["## What the default monitor ran", ""]
    for name, runs in fits.items():
        counts = [estimator_counts(f.history) for f in runs["default"]]
        estimators = sorted({e for c in counts for e in c}, key=lambda e: (-median(c.get(e, 0) for c in counts), e))
        lines += [
            f"### {name}",
            "",
            "Per repeat: runs of each measure (`cost_table`), its seconds in all (median), and with `budget=None` "
            "for comparison (median seconds per run).",
            "",
            *measure_table(runs["default"], runs["none"]),
            "",
            f"Epochs in which each estimator logged `pred_test_loss` (of {epochs[name]}), per repeat:",
            "",
            *markdown_table(
                ("estimator", "epochs logged"), [(e, "/".join(str(c.get(e, 0)) for c in counts)) for e in estimators]
            ),
            "",
        ]
    return lines


def memory_section(memory: list[dict[str, float]]) -> list[str]:
    rows = [
        (LABELS[str(r["config"])], f"{int(r['train']):,}", f"{r['imports_mib']:.0f} MiB", f"{r['before_mib']:.0f} MiB")
        + (f"{r['peak_mib']:.0f} MiB", f"{r['peak_mib'] - r['before_mib']:.1f} MiB", fmt_s(r["seconds"]))
        + (int(r["full_runs"]), int(r["estimators_twice"]))
        for r in memory
    ]
    header = ("monitor", "train samples", "imports", "RSS before fit", "peak in fit", "fit's own", "fit time")
    lines = [
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
        *markdown_table(header + ("measure runs", "estimators logged ≥ 2×"), rows),
        "",
    ]
    by = {(str(r["config"]), int(r["scale"])): r for r in memory}
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
    return lines


# -- main ---------------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"smoke test: 1 repeat, 1 epoch, workloads {QUICK}")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workloads", help=f"comma-separated, of {list(WORKLOADS)} (default: all)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    add_arguments(parser, out="overhead.md")
    args = parser.parse_args()
    configure(args)
    if args.memory_child:
        scale, config = args.memory_child.split(",")
        print(json.dumps(memory_child(int(scale), config, args.epochs)))
        return
    if args.quick:
        args.repeats, args.epochs = 1, 1
        args.out = None if args.out == parser.get_default("out") else args.out
    chosen = args.workloads or (QUICK if args.quick else ",".join(WORKLOADS))
    names = [n.strip() for n in chosen.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workloads {unknown}; choose from {list(WORKLOADS)}")
    start = time.perf_counter()
    epochs = {name: args.epochs * WORKLOADS[name].epochs_factor for name in names}
    info: dict[str, tuple[int, int, int]] = {}
    fits: Fits = {}
    for name in names:
        workload = WORKLOADS[name]
        data: Any = workload.data()
        info[name] = (len(data.train_set), len(data.val_set), len(data.train_dataloader()))
        fit(partial(workload.model, data), data, 1, "default")  # warm-up: imports, allocator, first-call paths
        fits[name] = {c: [] for c in CONFIGS}
        for repeat in range(args.repeats):
            for config in CONFIGS:
                result = fit(partial(workload.model, data), data, epochs[name], config)
                fits[name][config].append(result)
                print(f"{name} repeat {repeat + 1} {config}: {result.summary()}", flush=True)
                if config in BUDGETS:
                    measured = result.seconds / fits[name]["plain"][-1].seconds - 1
                    print(f"  measured ratio - 1: {measured:.3f}; monitor's final overhead: {result.closing:.3f}")
    configs = ("default",) if args.quick else CONFIGS  # whose peak memory is measured
    memory = [] if args.no_memory else measure_memory(args.epochs, args.threads, configs)
    wall = time.perf_counter() - start
    lines = [
        "# GeneralizationMonitor overhead",
        "",
        f"`{command()}`",
        "",
        f"{machine()}, shared with other jobs; package: {package_origin()}. {args.epochs} epoch(s) per fit "
        f"(mnist1d-long {args.epochs * 3}), median of {args.repeats} interleaved repeat(s) after a warm-up fit; "
        f"benchmark wall time {wall / 60:.1f} min.",
        "",
        *time_section(epochs, info, fits),
        *cost_section(fits),
        *ran_section(epochs, fits),
        *(memory_section(memory) if memory else []),
    ]
    write_report("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
