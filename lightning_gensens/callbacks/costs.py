"""What a measure costs: what a run of it would use, a model of its runs' seconds fitted to the runs timed, and the
steady powers of two the plans make of their ratios."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from lightning_gensens.callbacks.stopwatch import MEASURE

KEPT = 3
"""Runs kept per sample count: a cost is the median of the last few, so one slow run does not move the plans."""


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
    timed: dict[int, list[float]] = field(default_factory=dict)
    """Seconds of the last :data:`KEPT` runs at the smallest and at the largest sample count timed."""

    def add(self, seconds: float, samples: int) -> None:
        self.runs += 1
        self.seconds += seconds
        self.timed[samples] = [*self.timed.get(samples, [])[1 - KEPT :], seconds]
        self.timed = {n: self.timed[n] for n in {min(self.timed), max(self.timed)}}

    def _line(self) -> tuple[int, float, float]:
        """The smallest size timed, its seconds, and seconds per extra sample (medians of the runs kept)."""
        (n0, t0), (n1, t1) = min(self.timed.items()), max(self.timed.items())
        c0, c1 = statistics.median(t0), statistics.median(t1)
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


OWN = "monitor: "
"""Prefix of the cost table's rows of the monitor's own work."""

ONCE = ("setup", "report")
"""Sections of the monitor's work that happen once per fit."""


def cost_table(costs: dict[str, Cost], totals: dict[str, float], runs: int) -> list[dict[str, Any]]:
    """One row per measure (runs, total seconds, seconds per run), then one per section of the monitor's own work
    (``monitor: <section>``; ``totals``: the stopwatch's seconds per section, over ``runs`` runs), so that the table
    adds up to everything the monitor spent."""
    # a measure's seconds as the stopwatch timed them (a run it failed in included), its runs as accounted
    timed = {s.removeprefix(MEASURE): t for s, t in totals.items() if s.startswith(MEASURE)}
    spent_by = {name: timed.get(name, c.seconds) for name, c in costs.items()}
    spent_by.update({name: t for name, t in timed.items() if name not in spent_by})
    rows = []
    for name, spent in sorted(spent_by.items(), key=lambda item: -item[1]):
        ran = costs[name].runs if name in costs else 0
        rows.append({"measure": name, "runs": ran, "seconds": spent, "seconds_per_run": spent / max(ran, 1)})
    own = {s: t for s, t in totals.items() if not s.startswith(MEASURE)}
    for section, seconds in sorted(own.items(), key=lambda item: -item[1]):
        ran = 1 if section in ONCE else runs
        rows.append(
            {"measure": f"{OWN}{section}", "runs": ran, "seconds": seconds, "seconds_per_run": seconds / max(ran, 1)}
        )
    return rows


def format_costs(table: list[dict[str, Any]]) -> str:
    header = f"{'measure':<30}{'runs':>6}{'seconds':>12}{'s per run':>12}"
    rows = [f"{r['measure']:<30}{r['runs']:>6}{r['seconds']:>12.3f}{r['seconds_per_run']:>12.4f}" for r in table]
    return "\n".join([header, "-" * len(header), *rows])


NEVER = 2**62
"""The period of a measure that never runs."""

GROW = 1.25
"""A period (or a divisor of the samples) grows only when the ratio it covers exceeds it by this factor: at most 25%
over the plan, which :data:`~lightning_gensens.callbacks.budget.PLANNED` leaves room for."""

SHRINK = 1.5
"""A period shrinks only when the ratio it covers falls this factor below the next smaller power of two."""


def steady(previous: int | None, ratio: float, up: bool = True) -> int:
    """A power of two for ``ratio``: the smallest at or above it (``up``), else the largest at or below it (at least
    1); ``previous`` is kept while ``ratio`` stays within a margin of it, so that noise does not move it."""
    if not math.isfinite(ratio) or ratio >= NEVER:
        return NEVER if up else 1
    if previous is not None and previous < NEVER:
        low, high = (previous / 2 / SHRINK, previous * GROW) if up else (previous / GROW, previous * 2 * SHRINK)
        if low < ratio <= high:
            return previous
    if ratio <= 1:
        return 1
    exponent = math.ceil(math.log2(ratio)) if up else math.floor(math.log2(ratio))
    return 2 ** min(exponent, 61)
