"""The compute budget: measuring stays within a fraction of training time, cheap measures run nearly every time,
an expensive one less often or on fewer samples; ``budget=None`` runs everything. Tested on the mechanism (a fake
clock, an artificially slow measure), never on wall-clock thresholds."""

import math

import pytest
from torchmetrics import MeanMetric

from lightning_gensens import GeneralizationMonitor
from lightning_gensens.callbacks.budget import MIN_SAMPLES, Budget
from lightning_gensens.measures import Estimate, Measure
from tests.callbacks.conftest import make_model, make_trainer


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_plan_times_new_measures_then_keeps_to_the_allowance():
    clock = FakeClock()
    budget = Budget(0.1, clock=clock)
    budget.fit_start()
    full = {"cheap": (1000, 2), "slow": (1000, 2), "weights": (1, 1)}
    assert budget.plan(full) == {"cheap": MIN_SAMPLES, "slow": MIN_SAMPLES, "weights": MIN_SAMPLES}
    clock.now = 10.0  # 10 s of training, then a first run that timed every measure
    budget.record({"cheap": 0.0128, "slow": 1.28, "weights": 0.01}, {"cheap": 128, "slow": 128, "weights": 1}, 1.4)
    assert budget.measuring == pytest.approx(1.4)
    clock.now += 1.4 + 20.0  # 30 s of training: 3 s allowed, a third each after the monitor's own 0.097 s
    plan = budget.plan(full)
    assert plan["cheap"] is None and plan["weights"] is None  # cheap: on everything
    assert 0 < plan["slow"] < 500  # 10 ms per sample: on what it saved plus what the cheap ones left
    budget.record({"slow": 1.0}, {"slow": 100}, 1.0)
    assert budget.plan(full)["slow"] == 0  # nothing left: it waits until training has earned the time
    clock.now += 100.0
    assert budget.plan(full)["slow"] is None
    assert Budget(None).plan(full) == dict.fromkeys(full)
    with pytest.raises(ValueError, match="budget"):
        Budget(0.0)


class Slow(Measure):
    """A measure that takes 20 ms per batch (of a fake clock advanced by the measure itself)."""

    name = "slow"
    clock = FakeClock()

    def make_metric(self, net, settings):
        return MeanMetric()

    def update(self, metric, record, net):
        metric.update(record.logits.mean())

    def estimate(self, computed, reference):
        return {self.name: Estimate(reference.loss)}


def test_an_artificially_slow_measure_is_throttled_and_the_cheap_ones_are_not(tmp_path, digits, monkeypatch):
    import time

    import lightning_gensens.callbacks.session as session

    real = time.perf_counter
    slow_time = {"extra": 0.0}

    def fake_now(net):
        return real() + slow_time["extra"]

    original_update = Slow.update

    def slow_update(self, metric, record, net):
        slow_time["extra"] += 0.5  # each batch "costs" half a second of measuring
        original_update(self, metric, record, net)

    monkeypatch.setattr(session, "_now", fake_now)
    monkeypatch.setattr(Slow, "update", slow_update)
    monitor = GeneralizationMonitor(measures=[Slow(), "trivial", "fisher_rao_norm"], probe_size=300, budget=0.1)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=8)
    trainer.fit(make_model(digits), digits)
    runs = {row["measure"]: row["runs"] for row in monitor.cost_table}
    measured = len(monitor.history)  # the runs the budget afforded: their cadence is throttled too
    assert 2 <= measured < 8
    assert runs["trivial"] == runs["fisher_rao_norm"] == measured  # cheap: in every run
    assert runs["slow"] < measured
    assert all(math.isfinite(row["gensens/overhead"]) for row in monitor.history)


def test_budget_none_runs_every_measure_on_everything_every_time(tmp_path, digits):
    monitor = GeneralizationMonitor(measures=["output_sensitivity", "jacobian_norm"], probe_size=300, budget=None)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=3)
    trainer.fit(make_model(digits), digits)
    assert {row["measure"]: row["runs"] for row in monitor.cost_table} == {"output_sensitivity": 3, "jacobian_norm": 3}
    assert all("gensens/jacobian_norm/seconds" in row for row in monitor.history)
