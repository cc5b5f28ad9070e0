"""The compute budget in fits on its clock (the wall clock plus simulated seconds, or a jittered fake clock): a slow
measure throttled, riders over the budget spaced unless a callback watches their keys, ``budget=None`` running
everything, a short fit naming what it never afforded, two clocks' noise picking the same runs."""

import logging
import math
import random

import lightning as L
import pytest
from torchmetrics import MeanMetric

from lightning_gensens import GeneralizationMonitor
from lightning_gensens.measures import Estimate, Measure
from tests.callbacks.conftest import make_model, make_trainer


class Slow(Measure):
    """A measure that takes 0.5 s of the fake clock per batch it sees."""

    name = "slow"

    def make_metric(self, net, settings):
        return MeanMetric()

    def update(self, metric, record, net):
        metric.update(record.logits.mean())

    def estimate(self, computed, reference):
        return {self.name: Estimate(reference.loss)}


class SlowRider(Slow):
    """A rider (it only reads captured outputs) as slow as :class:`Slow`."""

    name = "slow_rider"
    relative_cost = 1.0


def _slow_clock(monkeypatch, step: float) -> tuple:
    """A budget clock (the wall clock plus simulated seconds; nothing patches the global clock) and a callback
    on which each training step takes ``step`` s; each batch a :class:`Slow` measure sees takes 0.5 s of it."""
    import time

    extra = {"seconds": 0.0}

    class Steps(L.Callback):
        def on_train_batch_end(self, *args):
            extra["seconds"] += step

    original_update = Slow.update

    def slow_update(self, metric, record, net):
        extra["seconds"] += 0.5
        original_update(self, metric, record, net)

    monkeypatch.setattr(Slow, "update", slow_update)
    return (lambda: time.perf_counter() + extra["seconds"]), Steps()


def test_an_artificially_slow_measure_is_throttled_and_the_cheap_ones_are_not(tmp_path, digits, monkeypatch):
    """On the budget's clock (the monitor's one stopwatch), where each training step takes 1 s and each batch the slow
    measure sees 0.5 s."""
    clock, steps = _slow_clock(monkeypatch, step=1.0)
    monitor = GeneralizationMonitor(measures=[Slow(), "trivial", "average_confidence"], probe_size=300, budget=0.1)
    monitor.budget.clock = clock
    trainer = make_trainer(tmp_path, [monitor, steps], max_epochs=8)
    trainer.fit(make_model(digits), digits)
    runs = {row["measure"]: row["runs"] for row in monitor.cost_table}
    seconds = {row["measure"]: row["seconds"] for row in monitor.cost_table}
    assert runs["trivial"] == runs["average_confidence"] == len(monitor.history) == 8  # riders: with every run
    assert 1 <= runs["slow"] < 8
    training = 8 * trainer.num_training_batches
    assert seconds["slow"] <= 0.1 * training / 3 + 0.5 * 2 * 64 / 16  # its share, overdrawn by one run at most
    assert all(math.isfinite(row["gensens/overhead"]) for row in monitor.history)
    assert monitor.history[-1]["gensens/overhead"] <= 0.1
    assert monitor.budget.closing is not None and monitor.budget.closing <= 0.1


@pytest.mark.parametrize("watch", [False, True])
def test_riders_over_the_budget_measure_at_spaced_runs_unless_a_callback_watches_their_keys(
    tmp_path, digits, monkeypatch, caplog, watch
):
    """On the budget's clock, where each training step takes 0.1 s and each batch the rider sees 0.5 s."""
    from lightning.pytorch.callbacks import EarlyStopping

    clock, steps = _slow_clock(monkeypatch, step=0.1)
    monitor = GeneralizationMonitor(measures=[SlowRider(), "trivial"], probe_size=256, budget=0.1)
    monitor.budget.clock = clock
    stop = [EarlyStopping(monitor="gensens/trivial/pred_test_loss", strict=True, patience=100)] if watch else []
    trainer = make_trainer(tmp_path, [monitor, steps, *stop], max_epochs=12)
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        trainer.fit(make_model(digits), digits)
    said = " ".join(r.getMessage() for r in caplog.records)
    epochs = [int(row["epoch"]) for row in monitor.history]
    assert ("gensens/trivial/pred_test_loss watched by another callback" in said) == watch
    assert ("measured 3 of 12 validation runs (a run of the riders cost more than a run's allowance" in said) != watch
    if watch:
        assert epochs == list(range(12))  # EarlyStopping's key fresh at every run
        assert monitor.budget.closing > 0.1
    else:  # a run of the riders costs ~30 runs' allowances: spaced at the widest that still measures the last run
        assert epochs == [0, 1, 11]
        assert monitor.budget.closing < monitor.history[1]["gensens/overhead"]


def test_budget_none_runs_every_measure_on_everything_every_time(tmp_path, digits):
    monitor = GeneralizationMonitor(measures=["output_sensitivity", "jacobian_norm"], probe_size=300, budget=None)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=3)
    trainer.fit(make_model(digits), digits)
    measures = {row["measure"]: row["runs"] for row in monitor.cost_table if not row["measure"].startswith("monitor:")}
    assert measures == {"output_sensitivity": 3, "jacobian_norm": 3}
    assert all("gensens/jacobian_norm/seconds" in row for row in monitor.history)


def test_a_short_fit_names_what_it_never_afforded_and_builds_no_metric_for_it(tmp_path, digits, caplog):
    monitor = GeneralizationMonitor(probe_size=256)  # the default budget and measures
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        make_trainer(tmp_path, [monitor], max_epochs=3).fit(make_model(digits), digits)
    assert monitor.history and monitor.budget.call is not None and monitor.budget.call > 0  # the guesses' unit
    ran = {row["measure"] for row in monitor.cost_table}
    assert {"trivial", "average_confidence", "difference_of_confidences", "atc"} <= ran
    slots = {slot.measure.name: slot for slot in monitor._session.slots}
    assert "relative_flatness" not in ran and not slots["relative_flatness"].metrics
    (line,) = [r.getMessage() for r in caplog.records if "validation runs" in r.getMessage()]
    assert "within budget=0.1 it measured 3 of 3 validation runs; of the measures, " in line  # the riders: each
    assert "never ran: " in line and "relative_flatness (guessed" in line.split("never ran")[1]
    once = [row["measure"] for row in monitor.cost_table if row["runs"] == 1 and row["measure"] in slots]
    assert all(f"{name} (" in line.split("never ran")[0] for name in once)  # "ran once (a first, timing run)"


class JitteredClock:
    """A fit's clock for the budget: every reading advances it 0.1 ms and each training step what ``_Steps`` says,
    each off by a seeded random factor within ±20%. The monitor's work costs what it does (its readings),
    deterministically, and clocks of two seeds are two machines' timing noise."""

    def __init__(self, seed: int) -> None:
        self.rng, self.now = random.Random(seed), 0.0

    def advance(self, seconds: float) -> None:
        self.now += seconds * self.rng.uniform(0.8, 1.2)

    def __call__(self) -> float:
        self.advance(1e-4)
        return self.now


class _Steps(L.Callback):
    def __init__(self, clock: JitteredClock, seconds: float) -> None:
        self.clock, self.seconds = clock, seconds

    def on_train_batch_end(self, *args):
        self.clock.advance(self.seconds)


@pytest.mark.parametrize("step", [0.04, 0.06])  # steps where the two clocks agree (README: Limits)
def test_identical_seeded_fits_under_different_timing_noise_agree_in_sign_for_every_reliable_estimator(
    tmp_path, digits, step
):
    """The default monitor (budget=0.1) on two clocks of different noise: the same runs, so every estimator with at
    least 3 scored runs in both MAE tables has the same sign of skill in both."""
    tables, runs = [], []
    for seed in (1, 2):
        clock = JitteredClock(seed)
        monitor = GeneralizationMonitor()
        monitor.budget.clock = clock
        trainer = make_trainer(tmp_path / str(seed), [monitor, _Steps(clock, step)], max_epochs=10)
        trainer.fit(make_model(digits), digits)
        tables.append({row["estimator"]: row for row in monitor.mae_table})
        runs.append([sorted(key for key in row if key.endswith("/pred_test_loss")) for row in monitor.history])
    first, second = tables
    reliable = [name for name, row in first.items() if row["reliable"] and second[name]["reliable"]]
    spread = [name for name in reliable if first[name]["epochs"] < len(runs[0])]  # not riders: measured at some runs
    assert len(reliable) >= 10 and spread
    for name in reliable:
        for kind in ("loss", "error"):
            a, b = first[name][f"skill_{kind}"], second[name][f"skill_{kind}"]
            assert (a > 0, a < 0, math.isnan(a)) == (b > 0, b < 0, math.isnan(b)), (name, kind, a, b)
    assert runs[0] == runs[1]  # which estimator logged at which run
