"""The monitor's one stopwatch on a fake clock, and the one key builder."""

import pytest

from lightning_gensens.callbacks.keys import Keys, pool, predicted
from lightning_gensens.callbacks.stopwatch import Stopwatch, measures


class Ticks:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_each_section_is_charged_its_own_seconds_and_time_outside_every_section_is_not():
    clock = Ticks()
    stopwatch = Stopwatch(clock)
    clock.now = 5.0  # training: no section
    with stopwatch("probe"):
        clock.now += 1.0
        with stopwatch("measure/slow"):  # a measure fed from inside the probe: its own section
            clock.now += 2.0
        clock.now += 0.5
    clock.now += 10.0
    with stopwatch("logging"):
        clock.now += 0.25
        assert stopwatch.pending() == pytest.approx(3.75)  # the open section so far included
    run = stopwatch.flush()
    assert run == pytest.approx({"probe": 1.5, "measure/slow": 2.0, "logging": 0.25})
    assert measures(run) == pytest.approx({"slow": 2.0})
    assert stopwatch.flush() == {} and stopwatch.total() == pytest.approx(3.75)


def test_a_flush_inside_an_open_section_splits_it_between_the_two_accounts():
    clock = Ticks()
    stopwatch = Stopwatch(clock)
    with stopwatch("evaluate"):
        clock.now += 1.0
        assert stopwatch.flush() == {"evaluate": 1.0}
        clock.now += 2.0
    assert stopwatch.flush() == {"evaluate": 2.0}
    assert stopwatch.totals == {"evaluate": 3.0}
    stopwatch.reset()
    assert stopwatch.totals == {} and stopwatch.total() == 0.0


def test_an_exception_closes_the_section():
    clock = Ticks()
    stopwatch = Stopwatch(clock)
    with pytest.raises(RuntimeError), stopwatch("measure/bad"):
        clock.now += 1.0
        raise RuntimeError
    clock.now += 5.0
    assert stopwatch.flush() == {"measure/bad": 1.0}


def test_every_key_is_built_by_one_helper():
    keys = Keys("gensens")
    assert keys.shared("test_loss") == "gensens/test_loss"
    assert keys.shared(predicted("error"), f"{pool('shifted')}/") == "gensens/pool/shifted/pred_test_error"
    assert keys.measure("linf_norm", "seconds") == "gensens/linf_norm/seconds"
    assert (
        keys.estimator(f"{pool('shifted')}/trivial", predicted("loss")) == "gensens/pool/shifted/trivial/pred_test_loss"
    )
    assert keys.file("mae.csv") == "gensens_mae.csv"
    solo = Keys("solo", "solo/output_sensitivity")  # a single-measure callback namespaces the shared keys
    assert solo.shared("test_loss") == "solo/output_sensitivity/test_loss"
    assert solo.estimator("output_sensitivity", "mae") == "solo/output_sensitivity/mae"
