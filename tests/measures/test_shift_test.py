"""The shift test measure: its estimator against the functional layer, pools only, without reference labels, under
2-rank DDP against one process."""

import math

import pytest
import torch

from lightning_gensens.functional import fit_temperature, shift_estimate
from lightning_gensens.measures import OptimalTransport, Settings, ShiftTest
from tests.helpers import run_ddp
from tests.measures.logit_cases import NET, estimate, feed, logit_data, rank_estimates, reference, union_estimates


def test_the_estimator_equals_the_functional_layer_on_the_kept_sample():
    (ref, labels), (target, _) = logit_data(0, 90, 3.0), logit_data(1, 70, 1.5)
    measure = ShiftTest(test_samples=40, permutations=30)
    values, estimates = estimate(measure, ref, labels, target, reference())
    assert set(estimates) == {"shift_gated"} and measure.pools_only
    t = fit_temperature(ref, labels)
    assert float(values["temperature"]) == pytest.approx(float(t), rel=1e-8)
    # the kept sample holds every sample, in the order of its priorities: the same draws give the same tests
    metrics = {split: measure.make_metric(NET, Settings()) for split in ("train", "val")}
    feed(measure, metrics["train"], ref, labels)
    feed(measure, metrics["val"], target, None)
    r, v = metrics["train"].compute(), metrics["val"].compute()
    want = shift_estimate(
        r["logits"],
        r["labels"],
        r["features"],
        0.3,
        0.9,
        v["logits"],
        v["features"],
        values["temperature"],
        test_samples=40,
        permutations=30,
        generator=torch.Generator().manual_seed(0),
    )
    got = estimates["shift_gated"]
    assert float(got.error) == float(want.error) and float(got.loss) == float(want.loss)
    assert float(values["shift"]) == want.tests.shift
    assert all(float(values[p]) == float(getattr(want.tests, p)) for p in ("p_shift", "p_classes", "p_twin"))
    assert torch.equal(r["features"].double(), r["logits"][:, :3].float().double())  # features travel with their rows


def test_an_unlabeled_or_non_finite_reference_predicts_nothing():
    (ref, labels), (target, _) = logit_data(4, 40, 3.0), logit_data(5, 30, 1.0)
    assert estimate(ShiftTest(), ref, None, target, reference()) == ({}, {})
    assert estimate(ShiftTest(), ref, labels, target, reference(math.nan, math.nan))[1] == {}


def test_it_reads_only_the_samples_of_a_shift_test_keeping_the_same_features():
    assert ShiftTest().shares(ShiftTest()) and not ShiftTest().shares(ShiftTest(dims=8))
    assert not ShiftTest(max_samples=4096).shares(OptimalTransport())  # a logit sample keeps no inputs
    assert OptimalTransport().shares(ShiftTest(max_samples=4096))  # an input sample holds what it reads


def test_bad_arguments():
    for kwargs, match in (
        ({"alpha": 0.0}, "alpha"),
        ({"test_samples": 0}, "test_samples"),
        ({"permutations": True}, "permutations"),
        ({"dims": 0}, "dims"),
        ({"max_samples": 0}, "max_samples"),
    ):
        with pytest.raises(ValueError, match=match):
            ShiftTest(**kwargs)


def _ddp_estimates(rank: int, world_size: int) -> dict[str, float]:
    return rank_estimates(ShiftTest(max_samples=60, permutations=20), rank)


def test_two_ranks_compute_what_one_process_computes_on_their_union():
    per_rank = run_ddp(_ddp_estimates)
    assert per_rank[0] == per_rank[1]  # every rank computes the same number
    union = union_estimates(ShiftTest(max_samples=60, permutations=20))
    assert per_rank[0] == pytest.approx(union, rel=1e-12)
