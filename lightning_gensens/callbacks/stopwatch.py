"""The monitor's one clock: every piece of its work runs in a named section, and the stopwatch adds up each
section's own seconds (nested sections excluded), so that the budget, ``<prefix>/overhead`` and the cost table all
read the same account."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

MEASURE = "measure/"
"""Prefix of a measure's section (``measure/<name>``)."""
PROBE = "probe"
"""The section of the probe's forward passes (the measures they feed excluded)."""


class Stopwatch:
    """Seconds per section of the monitor's work, on ``clock`` (any monotonic ``() -> float``; tests pass a fake
    one, nothing patches :func:`time.perf_counter`).

    ``with stopwatch("name"):`` charges the time the block takes to ``name``, less the sections opened inside it.
    Time outside every section (training, Lightning) is never charged. :meth:`flush` hands over what was charged
    since the last flush, a run's account. On CUDA (:meth:`use`) each section boundary also records a CUDA event,
    and :meth:`flush` synchronises once and charges each span by its events, so asynchronous kernels land in the
    section that queued them without a synchronisation per section.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.totals: dict[str, float] = {}
        """Seconds per section since :meth:`reset`, as flushed."""
        self._open: list[str] = []
        self._last = 0.0
        self._pending: dict[str, float] = {}
        self._cuda: torch.device | None = None
        self._event: Any = None
        self._spans: list[tuple[Any, Any, str]] = []

    def reset(self) -> None:
        """Forget every account (a new fit); sections still open keep running."""
        self.totals, self._pending, self._spans = {}, {}, []
        self._event = None

    def use(self, device: torch.device | None) -> None:
        """Time the work queued on ``device`` too (CUDA events, from the next section boundary on); CPU devices need
        nothing."""
        cuda = device if device is not None and device.type == "cuda" else None
        if cuda != self._cuda:
            self._cuda, self._event = cuda, None

    def __call__(self, section: str) -> _Section:
        return _Section(self, section)

    def _mark(self) -> None:
        now = self.clock()
        if self._open:
            top = self._open[-1]
            self._pending[top] = self._pending.get(top, 0.0) + now - self._last
        self._last = now
        if self._cuda is not None:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            if self._open and self._event is not None:
                self._spans.append((self._event, event, self._open[-1]))
            self._event = event

    def pending(self) -> float:
        """Seconds charged since the last flush, the open sections' time so far included (on the host's clock)."""
        open_now = self.clock() - self._last if self._open else 0.0
        return sum(self._pending.values()) + open_now

    def flush(self) -> dict[str, float]:
        """What was charged since the last flush, per section (open sections up to now), added to :attr:`totals`."""
        if self._open:  # close the current span without closing the section
            self._mark()
        pending, self._pending = self._pending, {}
        if self._spans:  # CUDA: the events' times replace the host's, after one synchronisation
            self._spans[-1][1].synchronize()
            timed: dict[str, float] = {}
            for start, end, section in self._spans:
                timed[section] = timed.get(section, 0.0) + start.elapsed_time(end) / 1000
            pending.update(timed)
            self._spans = []
        for section, seconds in pending.items():
            self.totals[section] = self.totals.get(section, 0.0) + seconds
        return pending

    def total(self) -> float:
        """Seconds flushed since :meth:`reset`, over every section."""
        return sum(self.totals.values())


class _Section:
    """``with stopwatch(section):`` (a plain class: a generator-based context manager costs microseconds more, and
    the monitor opens dozens of sections per run)."""

    __slots__ = ("section", "stopwatch")

    def __init__(self, stopwatch: Stopwatch, section: str) -> None:
        self.stopwatch, self.section = stopwatch, section

    def __enter__(self) -> None:
        self.stopwatch._mark()
        self.stopwatch._open.append(self.section)

    def __exit__(self, *exc: object) -> None:
        self.stopwatch._mark()
        self.stopwatch._open.pop()


def measures(seconds: dict[str, float]) -> dict[str, float]:
    """The measures' own seconds in an account of :meth:`Stopwatch.flush`, by measure name."""
    return {name.removeprefix(MEASURE): s for name, s in seconds.items() if name.startswith(MEASURE)}
