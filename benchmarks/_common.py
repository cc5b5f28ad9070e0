"""What the benchmark scripts share: their common arguments, the machine and package they ran on, a fit of each
configuration (plain, default monitor, ``budget=None``) as users run it (its validation runs and the monitor's fixed
hooks timed by ``_hooks.py``), timing of calls, the process's resident memory, and the Markdown tables of the
monitor's costs."""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import lightning as L
import torch
from _hooks import ValidationClock, time_hooks
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger

from lightning_gensens import GeneralizationMonitor

T = TypeVar("T")
RESULTS = Path(__file__).parent / "results"
PREFIX = "gensens"
CONFIGS = ("plain", "default", "none")
LABELS = {"plain": "plain training", "default": "`GeneralizationMonitor()`", "none": "`budget=None`"}
BUDGETS = {"default": 0.1, "none": None}
"""The monitored configurations: the default budget and none."""
FIXED_HOOKS = ("setup", "on_fit_end")
"""The monitor's hooks that run once per fit: its fixed cost."""


# -- arguments and environment ------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser, out: str | None = None) -> None:
    """``--threads`` and, for a script that writes a report, ``--out`` (default ``results/<out>``)."""
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: on cores shared with other jobs, OpenMP threads spinning on a "
        "descheduled sibling made 2-thread runs up to 40x slower)",
    )
    if out is not None:
        parser.add_argument("--out", default=str(RESULTS / out), help="where the Markdown report is written")


def configure(args: argparse.Namespace) -> None:
    """Apply ``--threads``; silence warnings and the info logs of Lightning and transformers (reports say what ran)."""
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)


def cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def machine() -> str:
    """Versions, torch threads, CPU cores with their load average, and the GPU if there is one."""
    text = (
        f"torch {torch.__version__}, lightning {L.__version__}, Python {platform.python_version()} "
        f"({platform.machine()}), {torch.get_num_threads()} torch thread(s) on {cpus()} CPU cores "
        f"(load average {os.getloadavg()[0]:.1f})"
    )
    return text + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")


def package_origin() -> str:
    """Where ``lightning_gensens`` was imported from, with the repository's commit and whether it was modified."""
    import lightning_gensens

    root = Path(lightning_gensens.__file__).resolve().parent
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "lightning_gensens"], capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"`{root}`"
    if root == repo / "lightning_gensens":
        return f"this checkout at {commit}" + (" with uncommitted changes to `lightning_gensens/`" if dirty else "")
    return f"`{root}`, not this checkout's (which is at {commit})"


def command() -> str:
    """The command line that ran this script, as a reader would type it."""
    return " ".join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])


# -- training -----------------------------------------------------------------------------------------------------
def trainer(epochs: int, callbacks: Sequence[Callback], logs: str, **kwargs: Any) -> L.Trainer:
    """A one-device ``Trainer`` alike for every configuration: a ``CSVLogger`` writing to ``logs``, no checkpoints,
    progress bar, model summary or sanity check; ``kwargs`` (``accelerator``, ``precision``, …) are passed on."""
    options: dict[str, Any] = {"accelerator": "cpu", "devices": 1, **kwargs}
    return L.Trainer(
        max_epochs=epochs,
        callbacks=list(callbacks),
        logger=CSVLogger(logs),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **options,
    )


@dataclass
class Fit:
    """One ``Trainer.fit``: its wall time and, with a monitor, what the monitor reported and its fixed cost."""

    seconds: float
    validation: float = 0.0
    """Seconds in validation runs (:class:`ValidationClock`), where the monitor does all but its fixed work."""
    history: list[dict[str, float]] = field(default_factory=list)
    cost_table: list[dict[str, Any]] = field(default_factory=list)
    measuring: float = 0.0
    """The monitor's time as its budget accounts it: every section of its stopwatch (setup, hooks, runs, report)."""
    closing: float = math.nan
    """The monitor's own overhead at the end of the fit (its time over the training time, the report included)."""
    setup: float = 0.0
    fit_end: float = 0.0
    """The monitor's fit-end report (``on_fit_end``: the MAE and cost tables, the CSV and figure in the log dir)."""

    @property
    def fixed(self) -> float:
        return self.setup + self.fit_end

    @property
    def runs(self) -> float:
        """The monitor's stopwatch less its fixed cost: what it accounts for its validation runs."""
        return self.measuring - self.fixed

    @property
    def overhead(self) -> float:
        """The last ``gensens/overhead`` the monitor logged: measuring time over training time (NaN if none)."""
        return float(self.history[-1].get(f"{PREFIX}/overhead", math.nan)) if self.history else math.nan

    def summary(self) -> str:
        if not self.fixed:  # no monitor
            return f"{self.seconds:.2f} s"
        return (
            f"{self.seconds:.2f} s (fixed {self.fixed:.2f} s, last {PREFIX}/overhead {self.overhead:.3f}, "
            f"final {self.closing:.3f})"
        )


def fit(
    model: Callable[[], L.LightningModule], data: L.LightningDataModule, epochs: int, config: str, **kwargs: Any
) -> Fit:
    """Seed 0, build the model and fit it as users do in ``config`` (one of :data:`CONFIGS`), with a ``CSVLogger``
    (in a temporary directory) whether monitored or not; the monitor's :data:`FIXED_HOOKS` and the validation runs
    (:class:`ValidationClock`) are timed. ``kwargs`` go to :func:`trainer`."""
    L.seed_everything(0, verbose=False)
    module = model()
    monitor = GeneralizationMonitor(budget=BUDGETS[config]) if config in BUDGETS else None
    hooks = {} if monitor is None else time_hooks(monitor, FIXED_HOOKS)
    clock = ValidationClock()
    with tempfile.TemporaryDirectory() as logs:
        run = trainer(epochs, [clock] if monitor is None else [clock, monitor], logs, **kwargs)
        _, seconds = timed(lambda: run.fit(module, data))
    if monitor is None:
        return Fit(seconds, clock.seconds)
    history, costs = [dict(row) for row in monitor.history], list(monitor.cost_table)
    closing = math.nan if monitor.budget.closing is None else monitor.budget.closing
    fixed = (hooks["setup"], hooks["on_fit_end"])
    return Fit(seconds, clock.seconds, history, costs, monitor.budget.measuring, closing, *fixed)


# -- timing -------------------------------------------------------------------------------------------------------
def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """``fn()`` and its wall time in seconds."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def median_time(fn: Callable[[], T], repeats: int) -> tuple[T, float]:
    """The last of ``repeats`` calls after one warm-up call, and their median wall time."""
    out = fn()
    times = []
    for _ in range(repeats):
        out, seconds = timed(fn)
        times.append(seconds)
    return out, statistics.median(times)


# -- memory -------------------------------------------------------------------------------------------------------
def _status_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":")) / 1024


def peak_rss_mib() -> float:
    """This process's peak RSS: VmHWM where there is /proc (``ru_maxrss`` of a child started from a big parent
    reports at least the parent's RSS at fork, which survives exec)."""
    try:
        return _status_mib("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    """This process's resident memory now (NaN without /proc)."""
    try:
        return _status_mib("VmRSS")
    except OSError:
        return math.nan


def reset_peak_rss() -> bool:
    """Reset the process's RSS high-water mark to its current RSS (Linux), so that the peak is the fit's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# -- output -------------------------------------------------------------------------------------------------------
def estimator_counts(history: list[dict[str, float]]) -> dict[str, int]:
    """Per estimator, the measured epochs in which it logged a predicted test loss."""
    counts: dict[str, int] = defaultdict(int)
    suffix = "/pred_test_loss"
    for row in history:
        for key in row:
            if key.startswith(f"{PREFIX}/") and key.endswith(suffix) and not key.startswith(f"{PREFIX}/pool/"):
                counts[key[len(PREFIX) + 1 : -len(suffix)]] += 1
    return dict(counts)


def measure_rows(cost_table: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of a cost table that are measures (the others, ``monitor: <section>``, are the monitor's own work)."""
    return [r for r in cost_table if not str(r["measure"]).startswith("monitor: ")]


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def measure_table(default: Sequence[Fit], unbudgeted: Sequence[Fit]) -> list[str]:
    """Per measure: its runs in each fit under the default budget (``cost_table``), their median seconds in all and
    per run, and the median seconds per run with ``budget=None``; the costliest without a budget first."""
    tables = [{r["measure"]: r for r in measure_rows(f.cost_table)} for f in default]
    none: dict[str, list[float]] = defaultdict(list)
    for f in unbudgeted:
        for r in measure_rows(f.cost_table):
            none[r["measure"]].append(r["seconds_per_run"])
    rows = []
    for m in sorted({m for t in tables for m in t} | set(none), key=lambda m: -median(none[m] or [0.0])):
        ran = [t[m] for t in tables if m in t]
        per_run = median(r["seconds_per_run"] for r in ran) if ran else math.nan
        seconds = median(t[m]["seconds"] if m in t else 0.0 for t in tables) if tables else math.nan
        runs = "/".join(str(t[m]["runs"]) if m in t else "0" for t in tables)
        rows.append((m, runs, f"{seconds:.3f}", f"{per_run:.4f}", f"{median(none[m]) if none[m] else math.nan:.4f}"))
    return markdown_table(("measure", "runs", "seconds", "s per run", "`budget=None`: s per run"), rows)


BREAKDOWN: tuple[str, ...] = (
    "added",
    "setup",
    "fit-end report",
    "ratio without fixed cost",
    "measuring runs",
    "measures",
)
BREAKDOWN += ("monitor's own work", "elsewhere", "top measure (share of measures)")
BREAKDOWN_TEXT = (
    "*added*: fit time minus plain training's. The monitor's fixed cost, once per fit: *setup* "
    "(its `setup` hook) and *fit-end report* (its `on_fit_end`: the MAE and cost tables, the CSV and figure written "
    "to the logger's directory); *ratio without fixed cost*: (fit − both) / plain training, what a longer fit tends "
    "to. *measuring runs*: the monitor's time as its stopwatch accounts it, less the fixed cost; *measures*: the "
    "sum of the measures' `cost_table` seconds; *monitor's own work*: measuring runs minus measures (the probe's "
    "forward passes, the captures, logging); "
    "*elsewhere*: added minus all of these (hooks on every forward, Lightning, noise)."
)


def breakdown(plain: Sequence[Fit], fits: Sequence[Fit]) -> tuple[str, ...]:
    """The cells of :data:`BREAKDOWN`: where the monitored ``fits`` spent the time they added to the ``plain`` ones."""
    base = median(f.seconds for f in plain)
    added = median(f.seconds for f in fits) - base
    setup, end = median(f.setup for f in fits), median(f.fit_end for f in fits)
    measuring = median(f.measuring - f.fixed for f in fits)
    measures = median(sum(r["seconds"] for r in measure_rows(f.cost_table)) for f in fits)
    per_measure: dict[str, list[float]] = defaultdict(list)
    for f in fits:
        for r in measure_rows(f.cost_table):
            per_measure[r["measure"]].append(r["seconds"])
    top = max(per_measure, key=lambda m: median(per_measure[m])) if per_measure else "—"
    share = median(per_measure[top]) / measures if per_measure and measures > 0 else math.nan
    return (fmt_s(added), fmt_s(setup), fmt_s(end), f"{median(f.seconds - f.fixed for f in fits) / base:.2f}×") + (
        fmt_s(measuring),
        fmt_s(measures),
        fmt_s(measuring - measures),
        fmt_s(added - setup - end - measuring),
        f"{top} ({share:.0%})",
    )


def fmt_s(seconds: float) -> str:
    return f"{seconds:.2f} s" if abs(seconds) < 100 else f"{seconds:.0f} s"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """The lines of a Markdown table; cells are formatted by ``str``."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows]


def write_report(text: str, out: str | None) -> None:
    """Print the report and write it to ``out`` (if given)."""
    print(text)
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"written to {path}")
