"""The compute budget: measuring stays within a fraction of training time, cheap measures run nearly every time,
an expensive one less often or on fewer samples; ``budget=None`` runs everything. Tested on the mechanism (a fake
clock, an artificially slow measure), never on wall-clock thresholds."""

import logging
import math

import lightning as L
import pytest
from torchmetrics import MeanMetric

from lightning_gensens import GeneralizationMonitor
from lightning_gensens.callbacks.budget import MIN_SAMPLES, TRIAL_SAMPLES, Budget, Cost, Need
from lightning_gensens.measures import Estimate, Measure
from tests.callbacks.conftest import make_model, make_trainer


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _needs(**relative_costs: float) -> dict[str, Need]:
    """Data measures of 1,000 samples over 2 splits, or (names starting with "weights") weight-only ones."""
    return {
        name: Need(1, 1, cost) if name.startswith("weights") else Need(1000, 2, cost)
        for name, cost in relative_costs.items()
    }


def test_cost_model_is_proportional_from_one_size_then_affine_through_the_smallest_and_largest():
    cost = Cost()
    cost.add(0.32, 32)
    assert cost.estimate(64) == pytest.approx(0.64)  # one size seen: proportional
    assert cost.samples_for(0.64) == 64 and cost.samples_for(0.1) == 0
    cost.add(0.5, 128)  # affine: 0.32 s at 32 samples, 0.18 s more for 96 more
    assert cost.estimate(1000) == pytest.approx(0.32 + 0.18 / 96 * (1000 - 32))
    assert cost.samples_for(cost.estimate(300)) == 300
    cost.add(0.4, 64)  # only the smallest and the largest sizes are kept
    assert sorted(cost.timed) == [32, 128] and cost.runs == 3 and cost.seconds == pytest.approx(1.22)


def test_first_runs_start_with_the_cheapest_and_time_an_expensive_one_when_its_share_covers_a_guess():
    clock = FakeClock()
    budget = Budget(0.1, clock=clock)
    budget.fit_start(setup=0.01)
    needs = _needs(cheap=1, weights=1, slow=10)
    clock.now = 1.0  # before the probe is timed only those guessed at one forward call start, on everything
    assert budget.plan(needs) == {"cheap": None, "weights": None, "slow": 0}
    assert budget.probe_batches([256] * 8) == 1  # the probe's first MIN_PROBE samples
    budget.probe_timed(0.01, 256)
    budget.call_timed(0.01)
    budget.record({"cheap": 0.01, "weights": 0.005}, {"cheap": 2000, "weights": 1}, 0.05)
    assert budget.base == pytest.approx(0.035)
    clock.now += 0.05 + 29.0  # 30 s of training: 3 s allowed, 1 s each
    plan = budget.plan(needs)
    assert plan == {"cheap": None, "weights": None, "slow": TRIAL_SAMPLES}  # slow's guess 10 x 10 ms fits its share
    assert budget.guesses["slow"] == pytest.approx(0.1)
    budget.record({"cheap": 0.01, "weights": 0.005, "slow": 0.16}, {"cheap": 2000, "weights": 1, "slow": 32}, 0.2)
    clock.now += 0.2 + 10.0  # 40 s: slow has 4/3 - 0.16 s left, a full run would take 5 s: a share of its samples
    per_split = budget.plan(needs)["slow"]
    assert per_split is not None and MIN_SAMPLES <= per_split < 500


def test_the_riders_run_at_every_run_and_what_their_pool_leaves_pays_for_more_of_the_probe():
    clock = FakeClock()
    budget = Budget(0.1, clock=clock)
    budget.fit_start()
    needs = _needs(cheap=1, weights=1, slow=10)
    clock.now = 1.0
    budget.probe_timed(0.01, 256)
    budget.call_timed(0.01)
    budget.record({"cheap": 0.01, "weights": 0.01}, {"cheap": 2000, "weights": 1}, 0.1)  # 80 ms of own work
    clock.now += 0.1 + 0.5  # 1.5 s of training allow 150 ms, 80% planned; 100 ms spent: the pool is overdrawn
    assert budget.plan(needs) == {"cheap": None, "weights": None, "slow": 0}  # the riders run all the same
    assert budget.probe_batches([256] * 8) == 1  # on the probe's first MIN_PROBE samples
    assert budget.overhead() == pytest.approx(0.1 / 1.5)  # what they cost is said, not hidden
    clock.now += 100.0  # the pool leaves enough for the whole probe
    assert budget.plan(needs) == {"cheap": None, "weights": None, "slow": TRIAL_SAMPLES}
    assert budget.probe_batches([256] * 8) == 8


def test_without_cheap_measures_the_first_that_runs_pays_the_monitors_own_work():
    clock = FakeClock()
    budget = Budget(0.1, clock=clock)
    budget.fit_start()
    needs = _needs(slow=50, slower=100)
    clock.now = 1.0  # no unit for the guesses yet: the cheapest starts, so that the probe gets timed
    assert budget.plan(needs) == {"slow": TRIAL_SAMPLES, "slower": 0}
    budget.probe_timed(0.01, 256)
    budget.call_timed(0.01)
    budget.record({"slow": 0.1}, {"slow": 32}, 0.2)  # 100 ms of own work
    clock.now += 0.2 + 19.0  # 2 s allowed, 1 s each: slower's guess (1 s) and the run's own work do not fit
    assert budget.plan(needs)["slower"] == 0
    assert Budget(None).plan(needs) == dict.fromkeys(needs)
    assert Budget(None).probe_batches([256] * 8) == 8
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
    """On a clock where each training step takes 1 s and each batch the slow measure sees 0.5 s."""
    import time

    real = time.perf_counter
    extra = {"seconds": 0.0}

    def clock():
        return real() + extra["seconds"]

    class Steps(L.Callback):
        def on_train_batch_end(self, *args):
            extra["seconds"] += 1.0

    original_update = Slow.update

    def slow_update(self, metric, record, net):
        extra["seconds"] += 0.5
        original_update(self, metric, record, net)

    monkeypatch.setattr(time, "perf_counter", clock)
    monkeypatch.setattr(Slow, "update", slow_update)
    monitor = GeneralizationMonitor(measures=[Slow(), "trivial", "fisher_rao_norm"], probe_size=300, budget=0.1)
    monitor.budget.clock = clock
    trainer = make_trainer(tmp_path, [monitor, Steps()], max_epochs=8)
    trainer.fit(make_model(digits), digits)
    runs = {row["measure"]: row["runs"] for row in monitor.cost_table}
    seconds = {row["measure"]: row["seconds"] for row in monitor.cost_table}
    assert runs["trivial"] == runs["fisher_rao_norm"] == len(monitor.history) == 8  # cheap: with every run
    assert 1 <= runs["slow"] < 8
    training = 8 * trainer.num_training_batches
    assert seconds["slow"] <= 0.1 * training / 3 + 0.5 * 2 * 64 / 16  # its share, overdrawn by one run at most
    assert all(math.isfinite(row["gensens/overhead"]) for row in monitor.history)
    assert monitor.history[-1]["gensens/overhead"] <= 0.1


def test_budget_none_runs_every_measure_on_everything_every_time(tmp_path, digits):
    monitor = GeneralizationMonitor(measures=["output_sensitivity", "jacobian_norm"], probe_size=300, budget=None)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=3)
    trainer.fit(make_model(digits), digits)
    assert {row["measure"]: row["runs"] for row in monitor.cost_table} == {"output_sensitivity": 3, "jacobian_norm": 3}
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
    once = [row["measure"] for row in monitor.cost_table if row["runs"] == 1]
    assert all(f"{name} (" in line.split("never ran")[0] for name in once)  # "ran once (a first, timing run)"
