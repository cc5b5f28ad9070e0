"""What a measure costs: the cost model fitted to its timed runs, and the cost table adding up to the stopwatch."""

import pytest

from lightning_gensens.callbacks.costs import OWN, Cost, cost_table
from lightning_gensens.callbacks.stopwatch import MEASURE


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
    cost.add(0.5, 128)
    cost.add(5.0, 128)  # one slow run: the median of the last three at a size counts
    assert cost.estimate(128) == pytest.approx(0.5)


def test_the_cost_table_has_a_row_per_measure_then_per_section_of_the_monitors_own_work():
    cost = Cost()
    cost.add(0.2, 100)
    cost.add(0.2, 100)
    totals = {f"{MEASURE}slow": 0.5, "probe": 0.3, "setup": 0.1, f"{MEASURE}failed": 0.05}
    rows = cost_table({"slow": cost}, totals, runs=4)
    assert [r["measure"] for r in rows] == ["slow", "failed", f"{OWN}probe", f"{OWN}setup"]
    slow, failed, probe, setup = rows
    assert slow["seconds"] == 0.5 and slow["seconds_per_run"] == 0.25  # the stopwatch's seconds over its runs
    assert failed["runs"] == 0 and failed["seconds"] == 0.05  # timed in a run it failed in, never accounted
    assert probe["seconds_per_run"] == pytest.approx(0.3 / 4) and setup["runs"] == 1  # once per fit
    assert sum(r["seconds"] for r in rows) == pytest.approx(sum(totals.values()))
