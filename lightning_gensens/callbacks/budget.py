"""The monitor's compute budget: measuring stays within a fraction of the fit's training time."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

TRIAL_SAMPLES = 16
"""Samples per split of a measure's first run, which times it."""

MIN_SAMPLES = 64
"""Samples per split a data measure gets at least whenever it runs on a share of them."""

MIN_PROBE = 256
"""Probe samples a run evaluates at least (the train loss every estimator scales)."""

RIDER_COST = 1.0
"""The ``relative_cost`` up to which a measure is a rider: it only reads captured outputs or a few weights, and runs
at every run."""

PLANNED = 0.8
"""The part of the allowance the plans spend; the rest covers what the monitor cannot time itself (Lightning calling
its hooks, the capture inside the model's own validation forward)."""


@dataclass(frozen=True)
class Need:
    """What one measure would use this run: its samples over all its splits at full size (as of the last run; 1
    for a weight-only measure), its number of splits, and its ``relative_cost`` (a guess of its first run's cost
    in forward calls of the model on as many samples)."""

    samples: int
    splits: int
    relative_cost: float


@dataclass
class Cost:
    """What one measure has cost in this fit, and a model of what a run on ``n`` samples costs: affine in ``n``
    through the smallest and the largest run timed (proportional above the one size seen, before a second)."""

    runs: int = 0
    seconds: float = 0.0
    timed: dict[int, float] = field(default_factory=dict)
    """Seconds of the last run at the smallest and at the largest sample count timed."""

    def add(self, seconds: float, samples: int) -> None:
        self.runs += 1
        self.seconds += seconds
        self.timed[samples] = seconds
        self.timed = {n: self.timed[n] for n in {min(self.timed), max(self.timed)}}

    def _line(self) -> tuple[int, float, float]:
        """The smallest size timed, its seconds, and seconds per extra sample."""
        (n0, c0), (n1, c1) = min(self.timed.items()), max(self.timed.items())
        slope = max((c1 - c0) / (n1 - n0), 0.0) if n1 > n0 else c0 / max(n0, 1)
        return n0, c0, slope

    def estimate(self, samples: int) -> float:
        n0, c0, slope = self._line()
        return max(c0 + slope * (samples - n0), 0.0)

    def samples_for(self, seconds: float) -> int:
        """The most samples a run may use within ``seconds`` (0 if not even the smallest timed run fits)."""
        n0, c0, slope = self._line()
        if seconds < c0:
            return 0
        return n0 + int((seconds - c0) / slope) if slope > 0 else 2**62


class Budget:
    """Plans, before each measuring run, which measures run and on how many samples per split, so that the time
    spent measuring stays within ``fraction`` × the training time (the fit's wall time minus measuring), and
    accounts the time each measure took.

    Every measure earns an equal share of the allowance, so an expensive measure's cost delays only itself. The
    riders (``relative_cost`` at most :data:`RIDER_COST`: they read captured outputs or a few weights) run at every
    run, on every sample and :data:`MIN_PROBE` probe samples at least, so their keys are fresh at every validation;
    they pool their shares to pay for a run's own work (the probe's forward passes, bookkeeping, logging; setting up
    is charged to the first), and where that pool runs short the overhead logged says so. The other measures run when
    their share, saved up, covers them: on every sample if it can, else on as many samples as it pays for (at least
    :data:`MIN_SAMPLES` per split), cheapest first with what cheaper ones left over; an expensive measure runs less
    often rather than never. A measure not yet timed first runs on :data:`TRIAL_SAMPLES` samples per split, once its
    share covers a guess of that run: its ``relative_cost`` × the time of one forward call of the model on as many
    samples (before that call is timed only measures guessed at one call or less start, on everything).
    ``fraction=None`` runs every measure on everything, every time.
    """

    def __init__(self, fraction: float | None, clock: Callable[[], float] = time.perf_counter) -> None:
        if fraction is not None and not fraction > 0:
            raise ValueError(f"budget must be a positive fraction of the training time or None, got {fraction!r}.")
        self.fraction, self.clock = fraction, clock
        self.costs: dict[str, Cost] = {}
        self.guesses: dict[str, float] = {}
        """The guessed cost of each measure's first run, while it waits for it."""
        self.measuring = 0.0
        self.runs = 0
        self.base = 0.0
        """What the last run cost besides its measures: the probe's forward passes, bookkeeping, logging."""
        self.probe_per_sample: float | None = None
        self.call: float | None = None
        """Seconds of a forward call of the model on :data:`TRIAL_SAMPLES` samples (timed once per fit)."""
        self._start: float | None = None
        self._last_base = 0.0
        self._spare = 0.0
        """What the planned run leaves of its pool, for more of the probe."""

    def fit_start(self, setup: float = 0.0) -> None:
        """Start the clock of a fit, counting ``setup`` seconds the monitor already spent on it."""
        self._start, self.measuring, self.runs, self.base = self.clock(), setup, 0, 0.0
        self.probe_per_sample = self.call = None
        self.costs, self.guesses = {}, {}

    def training_time(self) -> float:
        return 0.0 if self._start is None else max(self.clock() - self._start - self.measuring, 0.0)

    def overhead(self, pending: float = 0.0) -> float:
        """Measuring time over training time so far, counting ``pending`` seconds of a run not yet recorded."""
        training = self.training_time() - pending
        return (self.measuring + pending) / training if training > 0 else math.inf

    def plan(self, needs: Mapping[str, Need]) -> dict[str, int | None]:
        """Per measure the samples per split it may use this run: ``None`` for all, 0 to skip (all 0: no run)."""
        if self.fraction is None:
            return {name: None for name in needs}
        guessed = {name for name in needs if name not in self.costs}
        # before a forward call is timed there is no unit for the guesses: only the cheapest measures start
        first = max(1.0, min((needs[name].relative_cost for name in guessed), default=1.0))
        estimates = {name: self._estimate(name, need, first) for name, need in needs.items()}
        # the riders run at every run, so that their keys are always fresh; they pool their shares, paying the run's
        # own work (setup, probe, logging) from it; what the pool leaves pays for more of the probe
        riders = [name for name in needs if needs[name].relative_cost <= RIDER_COST]
        allowance = PLANNED * self.fraction * self.training_time()
        share = allowance / max(len(needs), 1)
        others = [name for name in needs if name not in riders]
        spent = {name: self.costs[name].seconds if name in self.costs else 0.0 for name in others}
        plan: dict[str, int | None] = {name: 0 for name in needs}
        plan.update(dict.fromkeys(riders))
        pool = share * len(riders) - (self.measuring - sum(spent.values()))
        self._spare = max(pool - self.base - sum(estimates[name] for name in riders), 0.0)
        base_due = 0.0 if riders else self.base  # without riders, paid by the first other measure that runs
        # the others: on everything while their share covers it, cheapest first, with what cheaper ones left over
        surplus = 0.0
        for name in sorted(others, key=lambda n: estimates[n]):
            available = share - spent[name] + surplus
            trial = TRIAL_SAMPLES if name in guessed else None
            if estimates[name] + base_due <= available:
                plan[name], surplus, base_due = trial, available - estimates[name] - base_due, 0.0
                continue
            need, cost = needs[name], self.costs.get(name)
            if cost is not None and need.samples > need.splits:  # a data measure, on a share of its samples
                per_split = cost.samples_for(available - base_due) // need.splits
                if per_split >= MIN_SAMPLES:
                    plan[name] = per_split
                    surplus, base_due = available - base_due - cost.estimate(per_split * need.splits), 0.0
                    continue
        return plan

    def _estimate(self, name: str, need: Need, first: float) -> float:
        """What a run of the measure costs: from its timed runs, else guessed (and kept for the report); before the
        unit of the guesses is timed, nothing for those guessed at ``first`` forward calls or less, else infinite."""
        cost = self.costs.get(name)
        if cost is not None:
            return cost.estimate(need.samples)
        if self.call is None:
            guess = 0.0 if need.relative_cost <= first else math.inf
        else:
            guess = need.relative_cost * self.call
        self.guesses[name] = guess
        return guess

    def probe_batches(self, sizes: list[int]) -> int:
        """How many of the probe's batches (of ``sizes`` samples) the planned run evaluates: all without a budget;
        otherwise :data:`MIN_PROBE` samples and as many more as what the planned run leaves of its pool pays for
        (in a long fit, the whole probe)."""
        if self.fraction is None:
            return len(sizes)
        wanted = MIN_PROBE + (self._spare / self.probe_per_sample if self.probe_per_sample else 0.0)
        kept, total = 0, 0
        for size in sizes:
            if total >= wanted:
                break
            kept, total = kept + 1, total + size
        return kept

    def probe_timed(self, seconds: float, samples: int) -> None:
        """Note what the probe's forward passes cost per sample this run."""
        self.probe_per_sample = seconds / max(samples, 1)

    def call_timed(self, seconds: float) -> None:
        """Note what one forward call of the model on :data:`TRIAL_SAMPLES` samples costs: the unit of the guesses."""
        self.call = seconds

    def record(self, seconds: Mapping[str, float], samples: Mapping[str, int], total: float) -> None:
        """Account a run: each measure's seconds and samples, and the run's total wall time."""
        self.measuring += total
        base = max(total - sum(seconds.values()), 0.0)
        # the cheaper of the last two runs' own work: the first also paid one-time costs (drawing the probe)
        self.base = base if self.runs == 0 else min(base, self._last_base)
        self._last_base = base
        self.runs += 1
        for name, spent in seconds.items():
            self.costs.setdefault(name, Cost()).add(spent, samples.get(name, 1))

    def report(self, owner: str, measured: int, validations: int) -> list[dict[str, Any]]:
        """The cost table, printed through Lightning's rank-zero log, with one line saying how many of the fit's
        ``validations`` runs were ``measured`` and naming the measures the budget afforded once (their timing run)
        with their cost, and those it never afforded with the guess."""
        table = self.table()
        if table:
            rank_zero_info(f"{owner}: time spent measuring\n{format_costs(table)}")
        if self.fraction is None:
            return table
        once = [f"{r['measure']} ({r['seconds_per_run']:.3g} s)" for r in table if r["runs"] < 2]
        never = [f"{name} (guessed {_seconds(g)})" for name, g in self.guesses.items() if name not in self.costs]
        if once or never:
            runs = f"{measured} of {validations} validation runs" if validations else f"{self.runs} runs"
            parts = [f"ran once (a first, timing run): {', '.join(once)}"] if once else []
            parts += [f"never ran: {', '.join(never)}"] if never else []
            rank_zero_info(
                f"{owner}: within budget={self.fraction} it measured {runs}; of the measures, "
                + "; ".join(parts)
                + ". A longer fit or a larger budget runs them."
            )
        return table

    def table(self) -> list[dict[str, Any]]:
        """One row per measure: runs, total seconds, seconds per run."""
        return [
            {"measure": name, "runs": c.runs, "seconds": c.seconds, "seconds_per_run": c.seconds / max(c.runs, 1)}
            for name, c in sorted(self.costs.items(), key=lambda item: -item[1].seconds)
        ]


def _seconds(guess: float) -> str:
    return f"{guess:.3g} s" if math.isfinite(guess) else "not yet: the probe was never timed"


def format_costs(table: list[dict[str, Any]]) -> str:
    header = f"{'measure':<30}{'runs':>6}{'seconds':>12}{'s per run':>12}"
    rows = [f"{r['measure']:<30}{r['runs']:>6}{r['seconds']:>12.3f}{r['seconds_per_run']:>12.4f}" for r in table]
    return "\n".join([header, "-" * len(header), *rows])
