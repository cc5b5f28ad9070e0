"""The label-free baselines as measures: fed by hand-built captured records, checked against direct formulas."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from lightning_gensens.capture import Captured
from lightning_gensens.functional.confidence import _confidence_update
from lightning_gensens.measures import (
    MEASURES,
    AverageConfidence,
    AverageThresholdedConfidence,
    DifferenceOfConfidences,
    Estimate,
    Reference,
    Requirement,
    Settings,
    Trivial,
)
from lightning_gensens.measures._confidence import CONFIDENCE, ENTROPY, confidence_scores
from lightning_gensens.measures.base import SPLITS

BASELINES = ("trivial", "average_confidence", "difference_of_confidences", "atc")
NET = nn.Linear(3, 5)


def _logits(seed: int, n: int, scale: float = 2.0, k: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, k, generator=g, dtype=torch.float64)


def _records(logits: torch.Tensor, sizes: tuple[int, ...]) -> list[Captured]:
    """The logits split into captured batches (float32, as a model would give them)."""
    parts = torch.split(logits.float(), list(sizes))
    return [Captured(x=torch.zeros(p.shape[0], 3), logits=p) for p in parts]


def _run(measure, train: torch.Tensor, val: torch.Tensor, reference: Reference):
    """Feed train/val records through the measure's Metrics; return (values, estimates)."""
    settings = measure.settings(Settings())
    metrics = {split: measure.make_metric(NET, settings) for split in SPLITS}
    for split, logits in (("train", train), ("val", val)):
        n = logits.shape[0]
        for record in _records(logits, (n // 3, n // 3, n - 2 * (n // 3))):
            measure.update(metrics[split], record, NET)
    computed = measure.compute(metrics, NET, settings)
    return measure.values(computed), measure.estimate(computed, reference)


def _stats(logits: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample max-softmax confidence and predictive entropy, directly in float64 numpy."""
    z = logits.float().double().numpy()  # the float32 values the measure saw
    z = z - z.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    return p.max(1), -(p * np.log(p)).sum(1)


def _reference(loss: float, error: float) -> Reference:
    return Reference(torch.tensor(loss, dtype=torch.float64), torch.tensor(error, dtype=torch.float64), 5)


def _close(value, expected: float) -> None:
    assert float(value) == pytest.approx(expected, rel=1e-12, abs=1e-12)


TRAIN, VAL = _logits(0, 40), _logits(1, 31, scale=1.0)
REF = _reference(0.7, 7 / 40)


def test_baselines_are_registered_first_and_need_class_logits_only():
    assert list(MEASURES)[:4] == list(BASELINES)
    for name in BASELINES:  # trivial (test = train) holds for any output
        assert MEASURES[name].requires == (Requirement.NONE if name == "trivial" else Requirement.CLASS_LOGITS)
        assert not MEASURES[name]().needs(Requirement.LABELS)


def test_trivial_predicts_exactly_the_probe():
    values, estimates = _run(Trivial(), TRAIN, VAL, REF)
    assert set(estimates) == {"trivial"}
    (estimate,) = estimates.values()
    assert torch.equal(estimate.loss, REF.loss) and torch.equal(estimate.error, REF.error)
    assert float(values["train"]) == 40 and float(values["val"]) == 31  # samples per split
    assert values["train"].dtype == torch.float64


def test_trivial_counts_alike_through_update_forward_and_a_merge():
    through_update, through_forward, merged = (Trivial().make_metric(NET, Settings()) for _ in range(3))
    for n in (3, 0, 5):
        through_update.update(n)
        through_forward(n)
    merged.update(2)
    merged.merge_state(through_update)
    assert float(through_update.compute()) == float(through_forward.compute()) == 8
    assert float(merged.compute()) == 10


def test_average_confidence_against_direct_formula():
    values, estimates = _run(AverageConfidence(), TRAIN, VAL, REF)
    (train_conf, train_h), (val_conf, val_h) = _stats(TRAIN), _stats(VAL)
    estimate = estimates["average_confidence"]
    _close(estimate.loss, val_h.mean())
    _close(estimate.error, 1 - val_conf.mean())
    _close(values["train"], train_conf.mean())
    _close(values["val"], val_conf.mean())
    _close(values["train_entropy"], train_h.mean())
    _close(values["val_entropy"], val_h.mean())
    assert estimate.loss.dtype == torch.float64


def test_difference_of_confidences_against_direct_formula():
    values, estimates = _run(DifferenceOfConfidences(), TRAIN, VAL, REF)
    (train_conf, train_h), (val_conf, val_h) = _stats(TRAIN), _stats(VAL)
    estimate = estimates["difference_of_confidences"]
    _close(estimate.error, 7 / 40 + train_conf.mean() - val_conf.mean())
    _close(estimate.loss, 0.7 + val_h.mean() - train_h.mean())
    _close(values["val"], val_conf.mean())
    # target == reference gives back the probe's loss and error
    _, same = _run(DifferenceOfConfidences(), TRAIN, TRAIN, REF)
    _close(same["difference_of_confidences"].loss, 0.7)
    _close(same["difference_of_confidences"].error, 7 / 40)


@pytest.mark.parametrize("score", ["max_softmax", "negative_entropy"])
def test_atc_against_direct_formula(score):
    values, estimates = _run(AverageThresholdedConfidence(score=score), TRAIN, VAL, REF)
    (train_conf, train_h), (val_conf, val_h) = _stats(TRAIN), _stats(VAL)
    train_s, val_s = (train_conf, val_conf) if score == "max_softmax" else (-train_h, -val_h)
    threshold = np.sort(train_s)[7]  # exactly 7 of the 40 probe scores lie below it: P_probe(s < t) = 7/40
    assert (train_s < threshold).sum() == 7
    error = (val_s < threshold).mean()
    estimate = estimates["atc"]
    _close(estimate.error, error)
    _close(estimate.loss, 0.7 * error / (7 / 40))
    _close(values["train"], train_s.mean())
    _close(values["val"], val_s.mean())


@pytest.mark.parametrize("score", ["max_softmax", "negative_entropy"])
@pytest.mark.parametrize("m", [1, 7, 23, 39])
def test_atc_threshold_reproduces_the_probe_error_on_the_probe(score, m):
    """The threshold is fitted so that P_probe(s < t) = e_probe: predicting the probe itself gives e_probe back."""
    reference = _reference(1.3, m / 40)
    _, estimates = _run(AverageThresholdedConfidence(score=score), TRAIN, TRAIN, reference)
    assert float(estimates["atc"].error) == pytest.approx(m / 40, abs=1e-15)
    assert float(estimates["atc"].loss) == pytest.approx(1.3, rel=1e-12)


def test_atc_with_a_perfect_probe_predicts_nothing_and_logs_no_nan():
    values, estimates = _run(AverageThresholdedConfidence(), TRAIN, VAL, _reference(0.01, 0.0))
    assert estimates == {}
    assert all(math.isfinite(float(v)) for v in values.values())


@pytest.mark.parametrize("cls", [DifferenceOfConfidences, AverageThresholdedConfidence])
def test_shifting_baselines_predict_nothing_from_a_non_finite_probe(cls):
    _, estimates = _run(cls(), TRAIN, VAL, _reference(math.nan, math.nan))
    assert estimates == {}


def test_atc_validates_its_arguments():
    with pytest.raises(ValueError, match="score"):
        AverageThresholdedConfidence(score="entropy")
    with pytest.raises(ValueError, match="max_samples"):
        AverageThresholdedConfidence(max_samples=0)
    with pytest.raises(ValueError, match="max_samples"):
        AverageThresholdedConfidence(max_samples=-1)
    assert "negative_entropy" in repr(AverageThresholdedConfidence(score="negative_entropy"))


def test_atc_on_capped_scores_uses_the_kept_subset():
    measure = AverageThresholdedConfidence(max_samples=20)
    _, estimates = _run(measure, TRAIN, VAL, _reference(0.7, 5 / 20))
    (train_conf, _), (val_conf, _) = _stats(TRAIN[:20]), _stats(VAL[:20])
    threshold = np.sort(train_conf)[5]
    _close(estimates["atc"].error, (val_conf < threshold).mean())


def test_confidence_baselines_keep_no_per_sample_scores():
    for cls in (AverageConfidence, DifferenceOfConfidences):
        metric = cls().make_metric(NET, Settings())
        metric.update(TRAIN)
        assert metric.scores().numel() == 0


def test_estimates_are_estimate_objects_with_errors():
    for cls in (Trivial, AverageConfidence, DifferenceOfConfidences, AverageThresholdedConfidence):
        _, estimates = _run(cls(), TRAIN, VAL, REF)
        (estimate,) = estimates.values()
        assert isinstance(estimate, Estimate) and estimate.error is not None
        assert math.isfinite(float(estimate.loss)) and math.isfinite(float(estimate.error))


def test_the_confidence_measures_compute_a_record_s_scores_once_and_as_alone():
    """The per-sample scores are computed once per record and shared through its cache; every measure's numbers are
    those it computes alone, on the record and on a share of it."""
    measures = (AverageConfidence(), DifferenceOfConfidences(), AverageThresholdedConfidence())
    alone = [_run(type(measure)(), TRAIN, VAL, REF) for measure in measures]
    metrics = [{split: m.make_metric(NET, Settings()) for split in SPLITS} for m in measures]
    for split, logits in (("train", TRAIN), ("val", VAL)):
        for record in _records(logits, (7, logits.shape[0] - 7)):
            for measure, metric in zip(measures, metrics, strict=True):
                measure.update(metric[split], record, NET)
                assert set(record.cache) == {CONFIDENCE, ENTROPY}
            cached = record.cache[CONFIDENCE]
            assert confidence_scores(record)[0] is cached  # not computed again
            rows = torch.tensor([4, 0, 2])
            part = record.take(rows)  # a capped measure's share slices the cache: the scores of those rows
            for got, expected in zip(confidence_scores(part), _confidence_update(record.logits[rows]), strict=True):
                assert torch.equal(got, expected)
    for measure, metric, (values, estimates) in zip(measures, metrics, alone, strict=True):
        computed = measure.compute(metric, NET, Settings())
        assert measure.values(computed) == values
        shared = measure.estimate(computed, REF)[measure.name]
        assert (shared.loss, shared.error) == (estimates[measure.name].loss, estimates[measure.name].error)


def test_which_confidence_measures_may_read_another_s_metrics():
    ac, doc, atc = AverageConfidence(), DifferenceOfConfidences(), AverageThresholdedConfidence()
    assert ac.shares(doc) and doc.shares(ac) and ac.shares(atc) and doc.shares(atc)  # the means are in every one
    assert not atc.shares(ac) and not atc.shares(AverageThresholdedConfidence(max_samples=10))  # the scores it keeps
    assert atc.shares(AverageThresholdedConfidence(score="negative_entropy"))  # both scores are kept
    assert not ac.shares(Trivial()) and not Trivial().shares(Trivial())
