"""The monitor's compute budget: measuring stays within a fraction of the fit's training time."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

MIN_SAMPLES = 64
"""Samples per split a measure gets on its first run (to time it) and at least whenever it runs on a share."""

TRIALS_PER_RUN = 3
"""Measures timed (on their first, small run) per measuring run, in the order given: cheap ones come first."""

MIN_PROBE = 256
"""Probe samples a run evaluates at least (the train loss every estimator scales)."""


@dataclass
class Cost:
    """What one measure has cost in this fit."""

    runs: int = 0
    seconds: float = 0.0
    per_sample: float = 0.0
    """Seconds per sample of its last run (per run, for a measure whose cost does not depend on samples)."""
    samples: int = 0
    """Samples of its last run."""


class Budget:
    """Plans, before each measuring run, which measures run and on how many samples per split, so that the time
    spent measuring stays within ``fraction`` × the training time (the fit's wall time minus measuring), and
    accounts the time each measure took.

    Each measure earns an equal share of the allowance (after the monitor's own work: the probe's forward passes
    and the captures), so an expensive measure's cost delays only itself; what cheap measures leave unused goes to
    the others, cheapest first. A measure first runs on :data:`MIN_SAMPLES` samples per split, which times it; then
    it runs on every sample if its cost at the last run's rate fits, on as many samples as fit (at least
    :data:`MIN_SAMPLES` per split) otherwise, or waits: its share grows with training time, so an expensive measure
    runs less often rather than never. ``fraction=None`` runs every measure on everything, every time.
    """

    def __init__(self, fraction: float | None, clock: Callable[[], float] = time.perf_counter) -> None:
        if fraction is not None and not fraction > 0:
            raise ValueError(f"budget must be a positive fraction of the training time or None, got {fraction!r}.")
        self.fraction, self.clock = fraction, clock
        self.costs: dict[str, Cost] = {}
        self.measuring = 0.0
        self.runs = 0
        self.base = 0.0
        """What the last run cost besides its measures: the probe's forward passes, bookkeeping, logging."""
        self.probe_per_sample: float | None = None
        self._start: float | None = None

    def fit_start(self) -> None:
        self._start, self.measuring, self.runs, self.base, self.probe_per_sample = self.clock(), 0.0, 0, 0.0, None
        self.costs = {}

    def training_time(self) -> float:
        return 0.0 if self._start is None else max(self.clock() - self._start - self.measuring, 0.0)

    def overhead(self, pending: float = 0.0) -> float:
        """Measuring time over training time so far, counting ``pending`` seconds of a run not yet recorded."""
        training = self.training_time() - pending
        return (self.measuring + pending) / training if training > 0 else math.inf

    def affords_a_run(self) -> bool:
        """Whether the allowance left covers what a run costs besides its measures (the first run always runs):
        the cadence of measuring itself, so that the probe and the logging are not paid for every epoch."""
        if self.fraction is None or self.runs == 0:
            return True
        return self.fraction * self.training_time() - self.measuring >= self.base

    def plan(self, full: Mapping[str, tuple[int, int]]) -> dict[str, int | None]:
        """Per measure the samples per split it may use this run: ``None`` for all, 0 to skip. ``full`` gives each
        measure's samples over all its splits at full size (as of the last run; 1 for a weight-only measure) and
        its number of splits."""
        if self.fraction is None:
            return {name: None for name in full}
        spent = sum(c.seconds for c in self.costs.values())
        base = self.measuring - spent + self.base  # the monitor's own work so far and in this run, shared by all
        share = (self.fraction * self.training_time() - base) / max(len(full), 1)
        plan: dict[str, int | None] = {}
        wanting: list[tuple[float, str, float, int]] = []
        surplus = 0.0
        trials = TRIALS_PER_RUN
        for name, (samples, splits) in full.items():
            cost = self.costs.get(name)
            if cost is None:  # a first, small run times it; a few per run, so no run pays for every first one
                plan[name], trials = (MIN_SAMPLES, trials - 1) if trials > 0 else (0, trials)
                continue
            own = share - cost.seconds
            estimate = cost.per_sample * max(samples, 1)
            if estimate <= own:
                plan[name] = None
                surplus += own - estimate
            else:
                wanting.append((estimate, name, own, splits if samples > splits else 0))
        for estimate, name, own, splits in sorted(wanting):
            available = own + surplus  # what it saved, or owes, plus what the cheaper ones left
            per_sample = self.costs[name].per_sample
            per_split = int(available / (per_sample * splits)) if splits and per_sample > 0 and available > 0 else 0
            if estimate <= available:
                plan[name], surplus = None, available - estimate
            elif per_split >= MIN_SAMPLES:  # a data measure on a share of its samples
                plan[name], surplus = per_split, available - per_sample * per_split * splits
            else:
                plan[name] = 0
        return plan

    def probe_batches(self, sizes: list[int]) -> int:
        """How many of the probe's batches (of ``sizes`` samples) a run evaluates: all without a budget or before
        the probe is timed; otherwise as many as half of one run's share of the allowance pays for, and at least
        :data:`MIN_PROBE` samples."""
        if self.fraction is None or self.probe_per_sample is None or self.probe_per_sample <= 0:
            return len(sizes)
        affordable = 0.5 * self.fraction * self.training_time() / max(self.runs, 1) / self.probe_per_sample
        kept, total = 0, 0
        for size in sizes:
            if total >= max(affordable, MIN_PROBE):
                break
            kept, total = kept + 1, total + size
        return kept

    def probe_timed(self, seconds: float, samples: int) -> None:
        """Note what the probe's forward passes cost per sample this run."""
        self.probe_per_sample = seconds / max(samples, 1)

    def record(self, seconds: Mapping[str, float], samples: Mapping[str, int], total: float) -> None:
        """Account a run: each measure's seconds and samples, and the run's total wall time."""
        self.measuring += total
        self.runs += 1
        self.base = max(total - sum(seconds.values()), 0.0)
        for name, spent in seconds.items():
            cost = self.costs.setdefault(name, Cost())
            cost.runs += 1
            cost.seconds += spent
            cost.samples = samples.get(name, 1)
            cost.per_sample = spent / max(cost.samples, 1)

    def report(self, owner: str) -> list[dict[str, Any]]:
        """The cost table, printed through Lightning's rank-zero log, with one line naming the measures the budget
        afforded at most once (their timing run)."""
        table = self.table()
        if table:
            rank_zero_info(f"{owner}: time spent measuring\n{format_costs(table)}")
        starved = [row for row in table if row["runs"] < 2]
        if starved and self.fraction is not None:
            rank_zero_info(
                f"{owner}: within budget={self.fraction} these measures ran at most once (a first, timing run): "
                + ", ".join(f"{r['measure']} ({r['seconds_per_run']:.3g} s)" for r in starved)
            )
        return table

    def table(self) -> list[dict[str, Any]]:
        """One row per measure: runs, total seconds, seconds per run."""
        return [
            {"measure": name, "runs": c.runs, "seconds": c.seconds, "seconds_per_run": c.seconds / max(c.runs, 1)}
            for name, c in sorted(self.costs.items(), key=lambda item: -item[1].seconds)
        ]


def format_costs(table: list[dict[str, Any]]) -> str:
    header = f"{'measure':<30}{'runs':>6}{'seconds':>12}{'s per run':>12}"
    rows = [f"{r['measure']:<30}{r['runs']:>6}{r['seconds']:>12.3f}{r['seconds_per_run']:>12.4f}" for r in table]
    return "\n".join([header, "-" * len(header), *rows])
