import math

import numpy as np
import pytest
import torch

from lightning_gensens.functional.confidence import (
    _average_thresholded_confidence_compute,
    _confidence_compute,
    _confidence_update,
    atc_threshold,
    average_confidence,
    average_thresholded_confidence,
    difference_of_confidences,
    predictive_entropy,
    softmax_confidence,
)


def _logits(n: int, k: int = 5, seed: int = 0, scale: float = 3.0, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, k, generator=g, dtype=torch.float64) + shift * torch.arange(k, dtype=torch.float64)


def _np_stats(logits: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Max-softmax and entropy one sample at a time in numpy."""
    conf, ent = [], []
    for row in logits.numpy():
        z = row - row.max()
        p = np.exp(z) / np.exp(z).sum()
        conf.append(p.max())
        ent.append(-sum(pk * math.log(pk) for pk in p if pk > 0))
    return np.array(conf), np.array(ent)


def _np_atc(ref_scores: np.ndarray, ref_error: float, target_scores: np.ndarray) -> tuple[float, float]:
    """Threshold by scanning every candidate (closest count to e·n, smaller count on a tie), then target error."""
    n = len(ref_scores)
    best_t, best_gap, best_count = None, math.inf, None
    for t in sorted(set(ref_scores.tolist())) + [math.inf]:
        count = sum(1 for s in ref_scores if s < t)
        gap = abs(count - ref_error * n)
        if gap < best_gap or (gap == best_gap and count < best_count):
            best_t, best_gap, best_count = t, gap, count
    return best_t, sum(1 for s in target_scores if s < best_t) / len(target_scores)


REF, TARGET = _logits(40, seed=1), _logits(31, seed=2, scale=1.5, shift=0.3)


def test_per_sample_statistics_equal_numpy():
    conf, ent = _np_stats(REF)
    assert softmax_confidence(REF).dtype == torch.float64 and softmax_confidence(REF).shape == (40,)
    np.testing.assert_allclose(softmax_confidence(REF).numpy(), conf, rtol=1e-13)
    np.testing.assert_allclose(predictive_entropy(REF).numpy(), ent, rtol=1e-12)
    np.testing.assert_allclose(softmax_confidence(REF.float()).numpy(), _np_stats(REF.float().double())[0], rtol=1e-13)


def test_entropy_is_stable_for_huge_logits():
    logits = torch.tensor([[1e4, 0.0, -1e4], [800.0, 799.0, -5.0], [1e-300, 0.0, 0.0]], dtype=torch.float64)
    ent = predictive_entropy(logits)
    assert torch.isfinite(ent).all() and (ent >= 0).all()
    p = torch.tensor([1.0, math.e, math.exp(-804.0)], dtype=torch.float64) / (1.0 + math.e)  # second row, ~exact
    assert ent[0] == 0 and math.isclose(float(ent[1]), float(-(p[:2] * p[:2].log()).sum()), rel_tol=1e-12)
    assert math.isclose(float(ent[2]), math.log(3), rel_tol=1e-14)


def test_average_confidence_equals_numpy():
    conf, ent = _np_stats(TARGET)
    out = average_confidence(TARGET)
    assert set(out) == {"loss", "error"}
    assert math.isclose(float(out["error"]), 1 - conf.mean(), rel_tol=1e-12)
    assert math.isclose(float(out["loss"]), ent.mean(), rel_tol=1e-12)


def test_average_confidence_of_confident_logits_is_zero():
    logits = 60.0 * torch.nn.functional.one_hot(torch.arange(7) % 4, 4).double()
    out = average_confidence(logits)
    assert abs(float(out["error"])) < 1e-20 and 0 <= float(out["loss"]) < 1e-20


def test_difference_of_confidences_equals_numpy():
    (ref_conf, ref_ent), (tgt_conf, tgt_ent) = _np_stats(REF), _np_stats(TARGET)
    out = difference_of_confidences(REF, TARGET, ref_loss=0.7, ref_error=torch.tensor(0.25))
    assert math.isclose(float(out["error"]), 0.25 + ref_conf.mean() - tgt_conf.mean(), rel_tol=1e-12)
    assert math.isclose(float(out["loss"]), 0.7 + tgt_ent.mean() - ref_ent.mean(), rel_tol=1e-12)


def test_difference_of_confidences_on_the_reference_itself_is_exact():
    out = difference_of_confidences(REF, REF.clone(), ref_loss=0.3141, ref_error=0.175)
    assert float(out["loss"]) == 0.3141 and float(out["error"]) == 0.175


@pytest.mark.parametrize("score", ["max_softmax", "negative_entropy"])
@pytest.mark.parametrize("ref_error", [0.025, 0.3, 0.31, 0.5, 0.99, 1.0])
def test_atc_equals_numpy(score, ref_error):
    (ref_conf, ref_ent), (tgt_conf, tgt_ent) = _np_stats(REF), _np_stats(TARGET)
    ref_s, tgt_s = (ref_conf, tgt_conf) if score == "max_softmax" else (-ref_ent, -tgt_ent)
    threshold, error = _np_atc(ref_s, ref_error, tgt_s)
    out = average_thresholded_confidence(REF, ref_error, TARGET, ref_loss=0.8, score=score)
    assert out is not None and set(out) == {"error", "threshold", "loss"}
    assert math.isclose(float(out["threshold"]), threshold, rel_tol=1e-12) and float(out["error"]) == error
    assert math.isclose(float(out["loss"]), 0.8 * error / ref_error, rel_tol=1e-14)
    assert "loss" not in average_thresholded_confidence(REF, ref_error, TARGET, score=score)


def test_atc_threshold_matches_the_reference_error():
    scores = softmax_confidence(REF)
    n = scores.numel()
    for m in range(1, n + 1):  # no ties: exactly m of n scores below the threshold
        t = atc_threshold(scores, m / n)
        assert t is not None and int((scores < t).sum()) == m
    for error in torch.linspace(0.001, 1.0, 97).tolist():
        t = atc_threshold(scores, error)
        assert t is not None and abs(float((scores < t).double().mean()) - error) <= 0.5 / n + 1e-15
    assert atc_threshold(scores, 1.0) == math.inf
    assert average_thresholded_confidence(REF, 1.0, TARGET)["error"] == 1.0


def test_atc_threshold_never_splits_ties():
    scores = torch.tensor([0.9, 0.5, 0.1, 0.5, 0.5], dtype=torch.float64)
    # candidates 0.1, 0.5, 0.9, inf have 0, 1, 4, 5 scores below them
    assert atc_threshold(scores, 0.2) == 0.5  # 1 of 5 below
    assert atc_threshold(scores, 0.4) == 0.5  # wants 2: 1 is closer than 4
    assert atc_threshold(scores, 0.5) == 0.5  # wants 2.5: 1 and 4 are equally far, the smaller count wins
    assert atc_threshold(scores, 0.6) == 0.9  # wants 3: 4 is closer
    assert atc_threshold(scores, 0.05) == 0.1  # wants 0.25: nothing below the minimum


def test_atc_threshold_follows_its_rule_on_random_ties():
    # the rule by brute force: of the candidates (distinct scores, then +inf), the first whose count below is
    # nearest e·n
    g = torch.Generator().manual_seed(0)
    for trial in range(300):
        n = int(torch.randint(1, 40, (), generator=g))
        scores = torch.randint(0, 1 + trial % 7, (n,), generator=g).double() / 7
        for error in [*torch.rand(5, generator=g, dtype=torch.float64).tolist(), 1.0, 0.5 / n, min(1.5 / n, 1.0)]:
            candidates = [*sorted(set(scores.tolist())), math.inf]
            below = [int((scores < c).sum()) for c in candidates]
            distance = [abs(b - error * n) for b in below]
            expected = candidates[distance.index(min(distance))]
            assert float(atc_threshold(scores, error)) == expected


def test_atc_with_zero_reference_error_is_skipped():
    assert atc_threshold(softmax_confidence(REF), 0.0) is None
    assert average_thresholded_confidence(REF, 0.0, TARGET, ref_loss=0.1) is None
    assert average_thresholded_confidence(REF, torch.tensor(0.0), TARGET, score="negative_entropy") is None


def test_update_compute_split():
    parts = [_confidence_update(p) for p in REF.split(7)]
    conf, ent = torch.cat([c for c, _ in parts]), torch.cat([e for _, e in parts])
    stats = _confidence_compute(torch.tensor(40.0, dtype=torch.float64), conf.sum(), ent.sum())
    assert torch.allclose(stats["mean_confidence"], softmax_confidence(REF).mean(), rtol=1e-14)
    assert torch.allclose(stats["mean_entropy"], predictive_entropy(REF).mean(), rtol=1e-14)
    assert _confidence_update(torch.zeros(0, 3))[0].shape == (0,)  # an empty batch is fine in a Metric update
    with pytest.raises(ValueError, match="empty"):
        _confidence_compute(torch.tensor(0.0), torch.tensor(0.0), torch.tensor(0.0))
    with pytest.raises(ValueError, match="NaN or Inf"):
        _confidence_compute(torch.tensor(2.0), torch.tensor(float("nan")), torch.tensor(0.0))


@pytest.mark.parametrize(
    "logits, match",
    [
        (torch.zeros(4), r"\[B, K\]"),
        (torch.zeros(2, 3, 4), r"\[B, K\]"),
        (torch.zeros(4, 1), "K >= 2"),
        (torch.zeros(0, 3), "empty"),
        (torch.tensor([[0.0, float("nan")]]), "NaN or Inf"),
        (torch.tensor([[0.0, float("inf")]]), "NaN or Inf"),
        (torch.tensor([[0.0, -float("inf")]]), "NaN or Inf"),
    ],
)
def test_bad_logits_raise(logits, match):
    for fn in (softmax_confidence, predictive_entropy, average_confidence):
        with pytest.raises(ValueError, match=match):
            fn(logits)
    with pytest.raises(ValueError, match=match):
        difference_of_confidences(REF, logits, 0.5, 0.1)
    with pytest.raises(ValueError, match=match):
        average_thresholded_confidence(logits, 0.1, TARGET)
    with pytest.raises(ValueError, match=match):
        average_thresholded_confidence(REF, 0.1, logits)


@pytest.mark.parametrize("error", [-0.1, 1.5, float("nan"), torch.tensor(1.01)])
def test_bad_reference_error_raises(error):
    with pytest.raises(ValueError, match=r"ref_error must be in \[0, 1\]"):
        atc_threshold(softmax_confidence(REF), error)
    with pytest.raises(ValueError, match=r"ref_error must be in \[0, 1\]"):
        average_thresholded_confidence(REF, error, TARGET)
    with pytest.raises(ValueError, match=r"ref_error must be in \[0, 1\]"):
        difference_of_confidences(REF, TARGET, 0.5, error)


def test_other_bad_inputs_raise():
    with pytest.raises(ValueError, match="ref_loss must be finite"):
        difference_of_confidences(REF, TARGET, float("inf"), 0.1)
    with pytest.raises(ValueError, match="ref_loss must be finite"):
        average_thresholded_confidence(REF, 0.1, TARGET, ref_loss=float("nan"))
    with pytest.raises(ValueError, match="score must be one of"):
        average_thresholded_confidence(REF, 0.1, TARGET, score="entropy")
    with pytest.raises(ValueError, match=r"shape \[N\]"):
        atc_threshold(torch.zeros(3, 2), 0.1)
    with pytest.raises(ValueError, match="empty"):
        atc_threshold(torch.zeros(0), 0.1)
    with pytest.raises(ValueError, match="NaN or Inf"):
        atc_threshold(torch.tensor([0.5, float("nan")]), 0.1)
    with pytest.raises(ValueError, match="target_scores is empty"):
        _average_thresholded_confidence_compute(torch.rand(5), 0.2, torch.zeros(0))
