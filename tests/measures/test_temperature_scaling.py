"""The temperature-scaled DoC measure: its estimator against a sample-by-sample computation and the functional layer,
without reference labels, under 2-rank DDP against one process."""

import math

import numpy as np
import pytest
import torch

from lightning_gensens.functional import difference_of_entropies, fit_temperature, scaled_difference_of_confidences
from lightning_gensens.measures import AverageConfidence, OptimalTransport, TemperatureScaling
from tests.helpers import run_ddp
from tests.measures.logit_cases import estimate, logit_data, rank_estimates, reference, union_estimates


def _means(logits: torch.Tensor, t: float) -> tuple[float, float]:
    """Mean max-softmax and mean entropy of softmax(z/t), sample by sample in numpy."""
    confidences, entropies = [], []
    for z in logits.numpy() / t:
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        confidences.append(p.max())
        entropies.append(-(p * np.log(p)).sum())
    return float(np.mean(confidences)), float(np.mean(entropies))


def test_the_estimate_sample_by_sample_and_against_the_functional_layer():
    (ref, labels), (target, _) = logit_data(0, 90, 3.0), logit_data(1, 70, 1.5)
    values, estimates = estimate(TemperatureScaling(), ref, labels, target, reference())
    t = float(values["temperature"])
    assert t == pytest.approx(float(fit_temperature(ref, labels)), rel=1e-8)  # the same fit, other order
    assert t > 1.0  # labels that disagree with 40% of the argmaxes: overconfident logits are softened
    (c_ref, h_ref), (c_tgt, h_tgt) = _means(ref, t), _means(target, t)
    (doc_ts,) = estimates.values()
    assert set(estimates) == {"doc_ts"}
    assert float(doc_ts.error) == pytest.approx(0.3 + c_ref - c_tgt, rel=1e-10)
    assert float(doc_ts.loss) == pytest.approx(0.9 + h_tgt - h_ref, rel=1e-10)
    assert float(doc_ts.error) == pytest.approx(float(scaled_difference_of_confidences(ref, 0.3, target, t)))
    assert float(doc_ts.loss) == pytest.approx(float(difference_of_entropies(ref, 0.9, target, t)))


def test_the_reference_predicts_itself():
    ref, labels = logit_data(2, 64, 3.0)
    _, estimates = estimate(TemperatureScaling(), ref, labels, ref, reference(0.7, 0.25))
    assert float(estimates["doc_ts"].error) == pytest.approx(0.25, abs=1e-14)
    assert float(estimates["doc_ts"].loss) == pytest.approx(0.7, abs=1e-14)


def test_an_unlabeled_or_non_finite_reference_predicts_nothing():
    (ref, labels), (target, _) = logit_data(4, 40, 3.0), logit_data(5, 30, 1.0)
    assert estimate(TemperatureScaling(), ref, None, target, reference()) == ({}, {})
    values, estimates = estimate(TemperatureScaling(), ref, labels, target, reference(math.nan, math.nan))
    assert set(values) == {"temperature"} and estimates == {}


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_samples"):
        TemperatureScaling(max_samples=0)


def _ddp_estimates(rank: int, world_size: int) -> dict[str, float]:
    return rank_estimates(TemperatureScaling(max_samples=60), rank)


def test_two_ranks_compute_what_one_process_computes_on_their_union():
    per_rank = run_ddp(_ddp_estimates)
    assert per_rank[0] == per_rank[1]  # every rank computes the same number
    assert per_rank[0] == pytest.approx(union_estimates(TemperatureScaling(max_samples=60)), rel=1e-12)


def test_it_may_read_the_samples_of_a_measure_drawing_as_many_with_the_same_seed():
    ts = TemperatureScaling(max_samples=60)
    assert ts.shares(OptimalTransport(max_samples=60)) and OptimalTransport(max_samples=60).shares(ts)
    assert not ts.shares(OptimalTransport()) and not ts.shares(TemperatureScaling(max_samples=60, seed=3))
    assert not ts.shares(AverageConfidence())
