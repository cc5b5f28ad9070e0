"""The compute budget's plans on a fake clock: measuring stays within a fraction of training time, the riders run
at every run it affords (every run where a callback watches the keys), the others at evenly spaced runs that timing
noise does not move, an expensive one less often or on fewer samples; ``budget=None`` runs everything. Fits on the
budget's clock are in ``test_budget_fits.py``; never wall-clock thresholds."""

import logging
import random

import pytest

from lightning_gensens import GeneralizationMonitor
from lightning_gensens.callbacks.budget import MIN_SAMPLES, TRIAL_SAMPLES, Budget, Need


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


def _simulate(
    budget: Budget,
    needs: dict[str, Need],
    costs: dict[str, float],
    runs: int,
    jitter: float = 0.0,
    seed: int = 0,
    caps: dict[str, list[int | None]] | None = None,
) -> dict[str, list[int]]:
    """A fit of ``runs`` measuring runs on a fake clock: 1 s of training before each; a measure's run costs
    ``costs[name]`` on all its samples (proportionally fewer on a share), the probe 1 ms per 256 samples, the run's
    own work 1 ms; every timing off by a seeded random factor within ±``jitter``. The runs (1, 2, …) each measure
    ran at; its samples per split at each in ``caps``."""
    rng = random.Random(seed)

    def noisy(seconds: float) -> float:
        return seconds * rng.uniform(1 - jitter, 1 + jitter)

    clock = FakeClock()
    budget.clock = clock
    budget.fit_start()
    budget.expect(runs)
    ran: dict[str, list[int]] = {name: [] for name in needs}
    for index in range(1, runs + 1):
        clock.now += noisy(1.0)
        plan = budget.plan(needs)
        probe = budget.probe_batches([256] * 8) * 256
        seconds, samples = {}, {}
        for name, cap in plan.items():
            if cap != 0:
                ran[name].append(index)
                if caps is not None:
                    caps.setdefault(name, []).append(cap)
                need = needs[name]
                samples[name] = need.samples if cap is None else cap * need.splits
                seconds[name] = noisy(costs[name] * samples[name] / need.samples)
        probe_seconds = noisy(0.001 * probe / 256)
        budget.probe_timed(probe_seconds, probe)
        if budget.call is None:
            budget.call_timed(noisy(0.001))
        total = sum(seconds.values()) + probe_seconds + noisy(0.001)
        clock.now += total
        budget.record(seconds, samples, total, probe=probe_seconds)
    return ran


COSTS = {"cheap": 0.001, "weights": 0.001, "medium": 0.057, "slow": 0.146}
"""Per run allowed 80 ms (10% of 1 s, 80% planned), 20 ms a measure: medium costs 2.8 shares (every 4th run), slow
5.7 of what medium leaves it (every 8th)."""


RIDERS_OVER = {**COSTS, "cheap": 0.064, "weights": 0.064}
"""Riders of 130 ms a run with the probe and the run's own work, on an allowance of 80 ms: 1.6 runs' allowances."""


def test_the_others_run_at_evenly_spaced_runs_and_the_riders_at_every_run():
    ran = _simulate(Budget(0.1), _needs(cheap=1, weights=1, medium=10, slow=20), COSTS, runs=32)
    assert ran["cheap"] == ran["weights"] == list(range(1, 33))
    # the first run times the unit of the guesses; the second is each measure's timing run on a few samples
    assert ran["medium"] == [2, *range(4, 33, 4)]
    assert ran["slow"] == [2, *range(8, 33, 8)]


@pytest.mark.parametrize("costs", ["within", "riders over"])
@pytest.mark.parametrize("seed", range(5))
def test_timing_noise_of_20_percent_moves_no_run(seed, costs):
    """Neither the others' periods nor, where the riders alone cost more than a run's allowance, the runs' spacing."""
    needs, costs = _needs(cheap=1, weights=1, medium=10, slow=20), COSTS if costs == "within" else RIDERS_OVER
    exact = _simulate(Budget(0.1), needs, costs, runs=32)
    assert _simulate(Budget(0.1), needs, costs, runs=32, jitter=0.2, seed=seed) == exact


def test_in_a_fit_of_known_length_the_runs_are_counted_back_from_the_last_and_the_total_stays_within_budget():
    budget = Budget(0.1)
    ran = _simulate(budget, _needs(cheap=1, weights=1, medium=10, slow=20), COSTS, runs=38)
    assert ran["medium"] == [2, *range(6, 39, 4)] and ran["slow"] == [2, 14, 22, 30, 38]  # 38: the last run
    assert budget.overhead() <= 0.1
    unknown = Budget(0.1)
    unknown.expect = lambda runs: None  # the Trainer cannot tell (validation by time, an endless loader)
    ran = _simulate(unknown, _needs(cheap=1, weights=1, medium=10, slow=20), COSTS, runs=38)
    assert ran["medium"] == [2, *range(4, 37, 4)] and ran["slow"] == [2, 8, 16, 24, 32]


def test_what_the_riders_cost_beyond_their_shares_comes_out_of_the_others_shares():
    needs = _needs(cheap=1, weights=1, medium=10, slow=20)
    budget, caps = Budget(0.1), {}
    # riders of 30 ms on shares of 20 ms: 20 ms more, and the probe and the run's own work 2 ms, come out of the
    # others' shares, 20 − 11 ms each: halved (a power of two), from the third run on
    ran = _simulate(budget, needs, {**COSTS, "cheap": 0.03, "weights": 0.03}, runs=32, caps=caps)
    assert ran["cheap"] == ran["weights"] == list(range(1, 33))  # the riders run all the same
    assert ran["medium"] == [2, *range(8, 33, 8)]  # 57 ms on 10 ms: every 8th run (every 4th on 20 ms)
    assert ran["slow"] == [2, *range(8, 33, 8)] and caps["slow"] == [TRIAL_SAMPLES] + [125] * 4  # on a quarter
    assert budget.overhead() <= 0.1  # the riders and the others together
    costly = Budget(0.1)
    ran = _simulate(costly, needs, {**COSTS, "cheap": 0.04, "weights": 0.04}, runs=32)
    # nothing left for them once the riders' costs are known (the deficit counts from the third run)
    assert ran["cheap"] == list(range(1, 33)) and ran["medium"] == ran["slow"] == [2]
    assert costly.overhead() <= 0.1


@pytest.mark.parametrize("seed", range(5))
def test_timing_noise_moves_no_run_where_the_riders_overspend(seed):
    needs = _needs(cheap=1, weights=1, medium=10, slow=20)
    costs = {"cheap": 0.021, "weights": 0.021, "medium": 0.102, "slow": 0.203}  # others' shares of 18 ms
    exact = _simulate(Budget(0.1), needs, costs, runs=32)
    assert exact["medium"] == [2, *range(8, 33, 8)]
    assert _simulate(Budget(0.1), needs, costs, runs=32, jitter=0.2, seed=seed) == exact


def test_riders_costing_more_than_a_runs_allowance_run_at_spaced_runs_with_nothing_else():
    budget = Budget(0.1)
    ran = _simulate(budget, _needs(cheap=1, weights=1, medium=10, slow=20), RIDERS_OVER, runs=32)
    # the first two runs time them; from the third on, every 2nd counted back from the last
    assert ran["cheap"] == ran["weights"] == [1, 2, *range(4, 33, 2)]
    assert ran["medium"] == ran["slow"] == [2]  # the timing run only: the riders took the whole allowance
    assert budget.overhead() <= 0.1
    odd = Budget(0.1)
    assert _simulate(odd, _needs(cheap=1, weights=1), RIDERS_OVER, runs=31)["cheap"] == [1, 2, *range(3, 32, 2)]
    costly = {"cheap": 0.5, "weights": 0.5}  # 12.5 runs' allowances: every 16th run, at most as wide as the fit
    assert _simulate(Budget(0.1), _needs(cheap=1, weights=1), costly, runs=40)["cheap"] == [1, 2, 24, 40]
    assert _simulate(Budget(0.1), _needs(cheap=1, weights=1), costly, runs=5)["cheap"] == [1, 2, 5]  # the last
    unknown = Budget(0.1)
    unknown.expect = lambda runs: None  # the Trainer cannot tell: every 8th at the widest
    assert _simulate(unknown, _needs(cheap=1, weights=1), costly, runs=20)["cheap"] == [1, 2, 8, 16]


def test_where_a_callback_watches_the_keys_the_riders_run_at_every_run_whatever_they_cost():
    budget = Budget(0.1)
    budget.watched = True
    ran = _simulate(budget, _needs(cheap=1, weights=1, medium=10, slow=20), RIDERS_OVER, runs=32)
    assert ran["cheap"] == ran["weights"] == list(range(1, 33)) and ran["medium"] == ran["slow"] == [2]
    assert budget.overhead() > 0.1  # what they cost is said, not hidden


def test_a_measure_too_slow_for_four_runs_in_the_fit_runs_four_times_on_a_power_of_two_share_of_its_samples():
    budget = Budget(0.1)
    caps: dict[str, list[int | None]] = {}
    ran = _simulate(budget, _needs(cheap=1, medium=10), {"cheap": 0.001, "medium": 0.6}, runs=16, caps=caps)
    assert ran["medium"] == [2, 4, 8, 12, 16]  # 16 shares of 40 ms would cover it: every 4th run instead
    assert caps["medium"] == [TRIAL_SAMPLES] + [500 // 4] * 4 and 500 // 4 >= MIN_SAMPLES  # on a quarter


def test_first_runs_start_with_the_cheapest_and_time_an_expensive_one_when_its_share_covers_a_guess():
    clock = FakeClock()
    budget = Budget(0.1, clock=clock)
    budget.fit_start()
    needs = _needs(cheap=1, weights=1, slow=10)
    clock.now = 1.0  # before the unit is timed only those guessed at one forward call start, on everything
    assert budget.plan(needs) == {"cheap": None, "weights": None, "slow": 0}
    assert budget.probe_batches([256] * 8) == 1  # the probe's first MIN_PROBE samples
    budget.probe_timed(0.01, 256)
    budget.call_timed(0.01)
    budget.record({"cheap": 0.01, "weights": 0.005}, {"cheap": 2000, "weights": 1}, 0.05, probe=0.01)
    assert budget.own == pytest.approx(0.025)
    clock.now += 0.05 + 29.0  # 30 s of training over 2 runs: 1.2 s a run planned, 0.4 s for each measure
    assert budget.plan(needs) == {"cheap": None, "weights": None, "slow": TRIAL_SAMPLES}  # its guess: 10 x 10 ms
    assert budget.guesses["slow"] == pytest.approx(0.1)


def test_the_riders_run_at_every_run_and_what_their_shares_leave_pays_for_more_of_the_probe():
    clock = FakeClock()
    budget = Budget(0.1, clock=clock)
    budget.fit_start()
    needs = _needs(cheap=1, weights=1, slow=10)
    clock.now = 1.0
    budget.plan(needs)
    budget.probe_timed(0.01, 256)
    budget.call_timed(0.01)
    budget.record({"cheap": 0.01, "weights": 0.01}, {"cheap": 2000, "weights": 1}, 0.1, probe=0.01)
    clock.now += 0.1 + 0.5  # 1.5 s of training over 2 runs allow 60 ms a run: less than the riders cost
    assert budget.plan(needs) == {"cheap": None, "weights": None, "slow": 0}  # the riders run all the same
    assert budget.probe_batches([256] * 8) == 1  # on the probe's first MIN_PROBE samples
    assert budget.overhead() == pytest.approx(0.1 / 1.5)  # what they cost is said, not hidden
    clock.now += 300.0  # their shares would leave enough for the whole probe, but its size is the fit's
    assert budget.plan(needs)["cheap"] is None and budget.probe_batches([256] * 8) == 1
    roomy = Budget(0.1, clock=clock)
    roomy.fit_start()
    clock.now += 300.0
    roomy.plan(needs)
    roomy.probe_timed(0.01, 256)
    roomy.record({"cheap": 0.01, "weights": 0.01}, {"cheap": 2000, "weights": 1}, 0.1, probe=0.01)
    clock.now += 300.0
    roomy.plan(needs)  # at the second run the riders' shares leave enough for the whole probe: for the fit
    assert roomy.probe_batches([256] * 8) == 8


def test_without_riders_the_cheapest_starts_and_budget_none_runs_everything():
    clock = FakeClock()
    budget = Budget(0.1, clock=clock)
    budget.fit_start()
    needs = _needs(slow=50, slower=100)
    clock.now = 1.0  # no unit for the guesses yet: the cheapest starts, so that the unit gets timed
    assert budget.plan(needs) == {"slow": TRIAL_SAMPLES, "slower": 0}
    assert Budget(None).plan(needs) == dict.fromkeys(needs)
    assert Budget(None).probe_batches([256] * 8) == 8
    with pytest.raises(ValueError, match="budget"):
        Budget(0.0)


def test_a_callback_watches_the_monitors_keys_where_its_monitor_is_one_of_them(caplog):
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from lightning_gensens.callbacks.configuration import watched

    monitor = GeneralizationMonitor(prefix="ours")
    theirs = [
        EarlyStopping(monitor="val_loss"),
        ModelCheckpoint(),
        EarlyStopping(monitor="oursx/trivial/pred_test_loss"),
    ]
    assert not watched(monitor, [monitor, *theirs], budgeted=True)
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        assert watched(monitor, [*theirs, ModelCheckpoint(monitor="ours/pool/a/pred_test_error")], budgeted=True)
        assert watched(monitor, [EarlyStopping(monitor="ours/test_loss")], budgeted=False)  # says nothing
    (line,) = [r.getMessage() for r in caplog.records]
    assert "ours/pool/a/pred_test_error watched by another callback, so every validation run measures" in line
