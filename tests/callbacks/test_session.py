"""Measures reading another's Metrics (:meth:`Measure.shares`): fed and computed once, the same numbers as each
measure alone, and a failing source handing its Metrics on (or, where it failed feeding them, its readers off)."""

import pytest

from lightning_gensens import GeneralizationMonitor
from lightning_gensens.measures import AverageThresholdedConfidence
from lightning_gensens.measures._confidence import ConfidenceMeasure
from lightning_gensens.measures._logits import LogitSampleMeasure
from tests.callbacks.conftest import make_model, make_trainer

RIDERS = ["trivial", "average_confidence", "difference_of_confidences", "atc", "temperature_scaling"]
READERS = ("average_confidence", "difference_of_confidences")


def _fit(tmp_path, digits, measures=RIDERS, **kwargs) -> GeneralizationMonitor:
    monitor = GeneralizationMonitor(measures, strict=kwargs.pop("strict", False), **kwargs)
    make_trainer(tmp_path, [monitor], max_epochs=3).fit(make_model(digits), digits)
    return monitor


def _values(monitor: GeneralizationMonitor) -> list[dict[str, float]]:
    """Every logged value but the timings."""
    return [{k: v for k, v in row.items() if not k.endswith(("/seconds", "/overhead"))} for row in monitor.history]


def _slots(monitor: GeneralizationMonitor) -> dict:
    assert monitor._session is not None
    return {slot.measure.name: slot for slot in monitor._session.slots}


def test_shared_metrics_log_exactly_what_each_measure_logs_alone(tmp_path, digits, monkeypatch):
    measures = [*RIDERS, "optimal_transport"]  # budget=None: the same runs and samples whatever the timing
    shared = _fit(tmp_path / "shared", digits, measures, budget=None)
    slots = _slots(shared)
    for name in READERS:  # the means are in ATC's Metrics: one ConfidenceStatistics per split
        assert slots[name].source is slots["atc"] and not slots[name].own
    assert slots["atc"].source is None and slots["trivial"].source is None
    # as many samples drawn with the same seed: one sample for both
    assert any(slots[name].source is not None for name in ("temperature_scaling", "optimal_transport"))
    for cls in (ConfidenceMeasure, LogitSampleMeasure):
        monkeypatch.setattr(cls, "shares", lambda self, other: False)
    alone = _fit(tmp_path / "alone", digits, measures, budget=None)
    assert all(slot.source is None and slot.own for slot in _slots(alone).values())
    assert _values(shared) == _values(alone) and len(shared.history) == 3


def test_a_source_failing_after_feeding_hands_its_metrics_to_its_readers(tmp_path, digits, monkeypatch):
    def estimate(self, computed, reference):
        raise RuntimeError("boom")

    monkeypatch.setattr(AverageThresholdedConfidence, "estimate", estimate)
    with pytest.warns(UserWarning, match="atc raised RuntimeError while estimating: boom"):
        monitor = _fit(tmp_path, digits)
    slots = _slots(monitor)
    assert slots["atc"].failed and not slots["atc"].own
    heir = slots[READERS[0]]
    assert heir.source is None and set(heir.own) == {"train", "val"} and slots[READERS[1]].source is heir
    for row in monitor.history:  # every run, the first one included
        assert {f"gensens/{name}/pred_test_loss" for name in READERS} <= set(row)


def test_a_source_failing_to_feed_its_metrics_switches_its_readers_off(tmp_path, digits, monkeypatch):
    def update(self, metric, record, net):
        raise RuntimeError("boom")

    monkeypatch.setattr(AverageThresholdedConfidence, "update", update)
    with pytest.warns(UserWarning) as caught:
        monitor = _fit(tmp_path, digits)
    said = [str(w.message) for w in caught]
    for name in READERS:
        assert any(f"{name} read the Metrics of atc, which failed to feed them" in message for message in said)
        assert _slots(monitor)[name].failed
        assert not any(key.startswith(f"gensens/{name}/") for row in monitor.history for key in row)
    assert any("gensens/temperature_scaling/temperature" in row for row in monitor.history)
