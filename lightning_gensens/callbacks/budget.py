"""The monitor's compute budget: measuring stays within a fraction of the fit's training time."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

from lightning_gensens.callbacks.costs import GROW, NEVER, SHRINK, Cost, Need, cost_table, format_costs, steady
from lightning_gensens.callbacks.stopwatch import Stopwatch

__all__ = ["GROW", "NEVER", "SHRINK", "Budget", "Cost", "Need", "format_costs"]

TRIAL_SAMPLES = 16
"""Samples per split of a measure's first run, which times it."""

MIN_SAMPLES = 64
"""Samples per split a data measure gets at least whenever it runs on a share of them."""

MIN_PROBE = 256
"""Probe samples a run evaluates at least (the train loss every estimator scales)."""

RIDER_COST = 1.0
"""The ``relative_cost`` up to which a measure is a rider: it only reads captured outputs or a few weights, and runs
at every run the budget affords (at every run where a callback watches the monitor's keys)."""

PLANNED = 0.8
"""The part of the allowance the plans spend; the rest covers what the plans cannot foresee (a period kept up to
:data:`GROW` × past its ratio, the fit-end report, the capture inside the model's own validation forward)."""

SQUEEZE_LIMIT = 64
"""Where the riders' deficit leaves the others less than 1/:data:`SQUEEZE_LIMIT` of their shares, they get none."""

CALLS = 3
"""Forward calls timed for the unit of the guesses; the fastest counts."""


class Budget:
    """Plans, before each measuring run, which measures run and on how many samples per split, so that the monitor's
    time (every section of its :class:`~lightning_gensens.callbacks.stopwatch.Stopwatch`: setting up, its hooks,
    the probe, the measures, logging, the fit-end report) stays within ``fraction`` × the training time (the fit's
    wall time minus the monitor's), and accounts the time each measure took.

    The plans are made per run, from rates: the allowance of a run is ``fraction`` × the training time per run so
    far, in equal shares per measure. The riders (``relative_cost`` at most :data:`RIDER_COST`: they read captured
    outputs) run at every run, on every sample and :data:`MIN_PROBE` probe samples at least; their shares pay for a
    run's own work (the probe, bookkeeping, logging), and what they leave at the second run pays for more of the
    probe for the rest of the fit (a power of two times :data:`MIN_PROBE`). What they cost beyond their shares comes
    out of the others' shares: those are divided by a power of two, which moves only when the deficit crosses a
    margin (as the periods do), and none where it would be less than 1/:data:`SQUEEZE_LIMIT` (the riders' costs,
    the run's own work and the probe's are means over the fit's runs, so the deficit moves little with noise). Where
    a run of the riders costs more than the whole allowance of a run (epochs of milliseconds), runs happen every
    ``k``-th time only, with nothing but the riders (``k`` a power of two, from the third run on, on the others'
    grid, at most the fit's runs, so that its last run measures), unless :attr:`watched`: then every run runs,
    whatever it costs (the overhead logged says so).

    The other measures are spread evenly over the fit: each gets an equal share of what the allowance leaves per
    run (so that one measure's cost never moves another's runs), and runs at every ``k``-th run, ``k`` the smallest
    power of two for which ``k`` shares cover a run of it (or, where that would be fewer than four runs in a fit of
    known length, on a power-of-two fraction of its samples, at least :data:`MIN_SAMPLES` per split, at that many
    runs). Its runs are every ``k``-th, counted back from the fit's last run where the Trainer says which it is (so
    the last run measures everything the fit affords; else runs 1, 2, … whose index is a multiple of ``k``), from
    run ``k`` on (its share paid for it). ``k`` only changes when its ratio moves a margin past a power of two
    (:data:`GROW`, :data:`SHRINK`), so run-to-run timing noise does not move its runs, and runs do not bunch (a
    ratio that sits near a margin, or a first decision, which has none, can differ between two machines' timings).
    A measure not yet timed first runs on :data:`TRIAL_SAMPLES` samples per split, planned the same way from a guess
    of that run: its ``relative_cost`` × the time of a forward call of the model on as many samples (the fastest of
    :data:`CALLS` calls; before it is timed only measures guessed at one call or less start).
    ``fraction=None`` runs every measure on everything, every time.
    """

    def __init__(self, fraction: float | None, clock: Callable[[], float] = time.perf_counter) -> None:
        if fraction is not None and not fraction > 0:
            raise ValueError(f"budget must be a positive fraction of the training time or None, got {fraction!r}.")
        self.fraction = fraction
        self.stopwatch = Stopwatch(clock)
        """The one clock of the monitor's work."""
        self.costs: dict[str, Cost] = {}
        self.guesses: dict[str, float] = {}
        """The guessed cost of each measure's first run, while it waits for it."""
        self.measuring = 0.0
        """The monitor's seconds in this fit: every section of the stopwatch charged so far."""
        self.runs = 0
        self.index = 0
        """Runs planned in this fit (measuring opportunities)."""
        self.expected: int | None = None
        """Runs this fit will offer, where the Trainer says."""
        self.own = 0.0
        """What a run costs besides its measures and the probe (bookkeeping, logging, the hooks): a mean over the
        fit's runs."""
        self.probe_per_sample: float | None = None
        self.call: float | None = None
        """Seconds of a forward call of the model on :data:`TRIAL_SAMPLES` samples (timed once per fit)."""
        self.closing: float | None = None
        """The overhead at the end of the fit, the fit-end report included."""
        self._start: float | None = None
        self._owns = (0.0, 0)
        """The own work of the runs counted in :attr:`own`: seconds in all, and runs."""
        self._probed = (0.0, 0)
        """The probe's seconds and samples over the fit's runs."""
        self._periods: dict[str, int] = {}
        self._divisors: dict[str, int] = {}
        self._squeeze: int | None = None
        """The others' shares are the share divided by this power of two (the riders' deficit taken out)."""
        self._spacing: int | None = None
        """The riders' run over a run's allowance, as a steady power of two (:attr:`spacing` caps it)."""
        self.watched = False
        """A callback watches the monitor's keys: every run runs, so that they are fresh at each validation."""
        self._probe: int | None = None
        """The probe's samples this run, in units of :data:`MIN_PROBE` (a power of two)."""

    @property
    def clock(self) -> Callable[[], float]:
        return self.stopwatch.clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self.stopwatch.clock = clock

    @property
    def spacing(self) -> int:
        """Runs happen every this many: 1, or where a run of the riders exceeds a run's allowance a power of two, at
        most as wide as the fit so that its last run measures (8 where its length is unknown)."""
        widest = 8 if self.expected is None else 2 ** max(int(math.log2(max(self.expected, 1))), 0)
        return min(self._spacing or 1, widest)

    def fit_start(self, setup: float = 0.0) -> None:
        """Start the clock of a fit (when the monitor starts setting up), counting ``setup`` seconds spent already."""
        self._start, self.measuring, self.runs, self.index = self.clock(), setup, 0, 0
        self.probe_per_sample = self.call = self.expected = self.closing = None
        self.costs, self.guesses, self._periods, self._divisors = {}, {}, {}, {}
        self._squeeze = self._spacing = None
        self.own, self._probe, self._owns, self._probed = 0.0, None, (0.0, 0), (0.0, 0)
        self.stopwatch.reset()

    def expect(self, runs: int | None) -> None:
        """The fit will offer ``runs`` more measuring runs (None: unknown)."""
        self.expected = None if runs is None else self.index + runs

    def training_time(self) -> float:
        return 0.0 if self._start is None else max(self.clock() - self._start - self.measuring, 0.0)

    def overhead(self) -> float:
        """The monitor's time over the training time so far."""
        training = self.training_time()
        return self.measuring / training if training > 0 else math.inf

    def charge(self, seconds: float) -> None:
        """Count ``seconds`` of the monitor's work outside a run's record (a hook, the fit-end report)."""
        self.measuring += seconds

    def affords(self, seconds: float) -> bool:
        """Whether the allowance left now (``fraction`` × the training time, less the monitor's time, the sections
        still open included) covers ``seconds`` more; always without a budget."""
        if self.fraction is None:
            return True
        return self.fraction * self.training_time() - self.measuring - self.stopwatch.pending() >= seconds

    def close(self) -> float:
        """The fit is over: keep its overhead (:attr:`closing`)."""
        self.closing = self.overhead()
        return self.closing

    def plan(self, needs: Mapping[str, Need]) -> dict[str, int | None]:
        """Per measure the samples per split it may use this run: ``None`` for all, 0 to skip (all 0: no run)."""
        if self.fraction is None:
            return {name: None for name in needs}
        self.index += 1
        n = self.index
        guessed = {name for name in needs if name not in self.costs}
        # before a forward call is timed there is no unit for the guesses: only the cheapest measures start
        first = max(1.0, min((needs[name].relative_cost for name in guessed), default=1.0))
        estimates = {name: self._estimate(name, need, first) for name, need in needs.items()}
        riders = [name for name in needs if needs[name].relative_cost <= RIDER_COST]
        others = sorted((name for name in needs if name not in riders), key=lambda name: estimates[name])
        share = PLANNED * self.fraction * self.training_time() / n / max(len(needs), 1)
        plan: dict[str, int | None] = dict.fromkeys(needs, 0)
        plan.update(dict.fromkeys(riders))
        probe = MIN_PROBE * (self.probe_per_sample or 0.0)
        ridden = sum(self._per_run(name, estimates[name]) for name in riders) + self.own
        self._plan_probe(share * len(riders) - ridden - probe)
        # what the riders, the run's own work and the probe cost beyond the riders' shares comes out of the others'
        # equal shares (equal, so that one measure's cost never moves another's runs)
        run = ridden + probe * (self._probe or 1)
        deficit = max(run - share * len(riders), 0.0)
        left = max(share - deficit / max(len(others), 1), share / SQUEEZE_LIMIT)
        # powers of two, moved only past a margin, from the third run on (means over two runs at least): the deficit
        # is a difference of noisy costs
        if n > 2 and share > 0:
            self._squeeze = steady(self._squeeze or 1, share / left)
            if not self.watched:  # a run of the riders against the whole allowance of a run
                self._spacing = steady(self._spacing or 1, run / (share * len(needs)))
        spacing = self.spacing
        if spacing > 1 and not self._due(n, spacing):
            return dict.fromkeys(needs, 0)
        squeeze = self._squeeze or 1
        others_share = 0.0 if squeeze >= SQUEEZE_LIMIT or spacing > 1 else share / squeeze
        longest = _longest_period(self.expected)
        for name in others:
            cap, period = self._schedule(name, needs[name], estimates[name], others_share, longest)
            if self._due(n, period):
                plan[name] = cap
        return plan

    def _due(self, index: int, period: int) -> bool:
        """Whether run ``index`` is on the grid of ``period``: every ``period``-th run, counted back from the fit's
        last run where the Trainer says which it is (so the last run measures), once ``period`` runs have earned it."""
        if period >= NEVER or index < period:
            return False
        if self.expected is not None and index <= self.expected:
            return (self.expected - index) % period == 0
        return index % period == 0

    def _schedule(self, name: str, need: Need, estimate: float, share: float, longest: int) -> tuple[int | None, int]:
        """The samples per split and the period of a measure's runs on ``share`` seconds per run."""
        ratio = estimate / share if share > 0 else math.inf
        period = self._periods[name] = steady(self._periods.get(name), ratio)
        cost = self.costs.get(name)
        if cost is None:
            return TRIAL_SAMPLES, period
        if period <= longest or need.samples <= need.splits:  # on everything, or a weight-only measure
            return None, period
        # on a power-of-two fraction of its samples, at the longest period that still runs it four times
        affordable = cost.samples_for(longest * share)
        divisor = self._divisors[name] = steady(self._divisors.get(name), need.samples / max(affordable, 1))
        per_split = math.ceil(need.samples / need.splits / divisor) if divisor < NEVER else 0
        return (None, period) if per_split < MIN_SAMPLES else (per_split, longest)

    def _plan_probe(self, spare: float) -> None:
        """The probe's size: :data:`MIN_PROBE` samples at the first run, which times it; from the second on, for the
        rest of the fit, :data:`MIN_PROBE` times the largest power of two the riders' spare share per run paid for
        then. One size per fit: every run's train loss, and the estimators' history, stay on the same samples."""
        if self._probe is None and self.probe_per_sample is not None:
            wanted = 1.0 + max(spare, 0.0) / (max(self.probe_per_sample, 1e-12) * MIN_PROBE)
            self._probe = steady(None, wanted, up=False)

    def _per_run(self, name: str, estimate: float) -> float:
        """What a rider's runs (on everything) cost on average in this fit; its estimate before its first run."""
        cost = self.costs.get(name)
        return estimate if cost is None or not cost.runs else cost.seconds / cost.runs

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
        otherwise the planned multiple of :data:`MIN_PROBE` samples (in a long fit, the whole probe)."""
        if self.fraction is None:
            return len(sizes)
        wanted = MIN_PROBE * (self._probe or 1)
        kept, total = 0, 0
        for size in sizes:
            if total >= wanted:
                break
            kept, total = kept + 1, total + size
        return kept

    def probe_timed(self, seconds: float, samples: int) -> None:
        """Note what the probe's forward passes cost this run: :attr:`probe_per_sample` is the mean per sample over
        the fit's runs."""
        self._probed = (self._probed[0] + seconds, self._probed[1] + samples)
        self.probe_per_sample = self._probed[0] / max(self._probed[1], 1)

    def call_timed(self, seconds: float) -> None:
        """Note what one forward call of the model on :data:`TRIAL_SAMPLES` samples costs: the unit of the guesses."""
        self.call = seconds

    def record(
        self, seconds: Mapping[str, float], samples: Mapping[str, int], total: float, probe: float = 0.0
    ) -> None:
        """Account a run: each measure's seconds and samples, the probe's seconds, and the run's total (everything
        the stopwatch charged since the last record)."""
        self.measuring += total
        # the mean of the runs' own work, the first's left out once there are others: it also paid one-time costs
        # (drawing the probe)
        own = max(total - sum(seconds.values()) - probe, 0.0)
        self._owns = (own, 1) if self.runs <= 1 else (self._owns[0] + own, self._owns[1] + 1)
        self.own = self._owns[0] / self._owns[1]
        self.runs += 1
        for name, spent in seconds.items():
            self.costs.setdefault(name, Cost()).add(spent, samples.get(name, 1))

    def report(self, owner: str, measured: int, validations: int) -> list[dict[str, Any]]:
        """The cost table, printed through Lightning's rank-zero log, with one line saying how many of the fit's
        ``validations`` runs were ``measured`` and naming the measures the budget afforded once (their timing run)
        with their cost, and those it never afforded with the guess."""
        table = self.table()
        if table:
            closing = "" if self.closing is None else f" (in all {self.closing:.1%} of the training time)"
            rank_zero_info(f"{owner}: time spent measuring{closing}\n{format_costs(table)}")
        if self.fraction is None:
            return table
        once = [
            f"{r['measure']} ({r['seconds_per_run']:.3g} s)"
            for r in table
            if r["runs"] < 2 and r["measure"] in self.costs
        ]
        never = [f"{name} (guessed {_seconds(g)})" for name, g in self.guesses.items() if name not in self.costs]
        spaced = self.spacing > 1 and measured < validations
        if once or never or spaced:
            runs = f"{measured} of {validations} validation runs" if validations else f"{self.runs} runs"
            if spaced:
                runs += f" (a run of the riders cost more than a run's allowance: 1 run in {self.spacing} at the end)"
            parts = [f"ran once (a first, timing run): {', '.join(once)}"] if once else []
            parts += [f"never ran: {', '.join(never)}"] if never else []
            rank_zero_info(
                f"{owner}: within budget={self.fraction} it measured {runs}"
                + (f"; of the measures, {'; '.join(parts)}" if parts else "")
                + ". A longer fit or a larger budget runs them."
            )
        return table

    def table(self) -> list[dict[str, Any]]:
        """The cost table of the fit so far (:func:`~lightning_gensens.callbacks.costs.cost_table`)."""
        return cost_table(self.costs, self.stopwatch.totals, self.runs)


def _longest_period(expected: int | None) -> int:
    """The longest period that still runs a measure four times in a fit of ``expected`` runs (8 if unknown)."""
    if expected is None:
        return 8
    return 2 ** max(int(math.log2(max(expected // 4, 1))), 0)


def _seconds(guess: float) -> str:
    return f"{guess:.3g} s" if math.isfinite(guess) else "not yet: the probe was never timed"
