"""The shift test measure: its estimator against the functional layer (with and without the probe's output-layer
inputs), pools only, without reference labels, under 2-rank DDP against one process."""

import math

import pytest
import torch

from lightning_gensens.capture import Captured
from lightning_gensens.functional import fit_temperature, neighbour_distances, shift_estimate
from lightning_gensens.measures import OptimalTransport, Requirement, Settings, ShiftTest
from tests.helpers import run_ddp
from tests.measures.logit_cases import (
    NET,
    _flat,
    estimate,
    feed,
    logit_data,
    rank_estimates,
    reference,
    union_estimates,
)


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
    assert not ShiftTest().shares(ShiftTest(neighbours=None)) and ShiftTest().shares(ShiftTest(neighbours=9))
    assert not ShiftTest(max_samples=4096).shares(OptimalTransport())  # a logit sample keeps no inputs
    assert OptimalTransport().shares(ShiftTest(max_samples=4096))  # an input sample holds what it reads


def test_bad_arguments():
    for kwargs, match in (
        ({"alpha": 0.0}, "alpha"),
        ({"test_samples": 0}, "test_samples"),
        ({"permutations": True}, "permutations"),
        ({"dims": 0}, "dims"),
        ({"max_samples": 0}, "max_samples"),
        ({"neighbours": 0}, "neighbours"),
        ({"neighbours": True}, "neighbours"),
        ({"head_dims": 0}, "head_dims"),
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


def _heads(logits: torch.Tensor) -> torch.Tensor:
    """Output-layer inputs that travel with their rows: a function of the row."""
    return torch.cat([logits, logits.square()], dim=1).float()


def _feed_heads(measure, metric, logits, labels, batch: int = 16) -> None:
    for start in range(0, logits.shape[0], batch):
        rows = logits[start : start + batch]
        y = None if labels is None else labels[start : start + batch]
        measure.update(metric, Captured(x=rows[:, :3].float(), logits=rows, y=y, head=_heads(rows)), NET)


def _three_splits(measure, probe, ref, target, seed: int = 0) -> dict:
    metrics = {split: measure.make_metric(NET, Settings(seed=seed)) for split in ("probe", "train", "val")}
    for split, (logits, labels) in (("probe", probe), ("train", ref), ("val", target)):
        _feed_heads(measure, metrics[split], logits, labels)
    return metrics


def test_the_covariate_estimate_reads_the_probe_s_output_layer_inputs():
    probe, ref, target = logit_data(0, 80, 3.0), logit_data(1, 90, 3.0), logit_data(2, 70, 1.0)
    measure = ShiftTest(test_samples=40, permutations=30, neighbours=3)
    assert measure.needs(Requirement.HEAD) and not ShiftTest(neighbours=None).needs(Requirement.HEAD)
    metrics = _three_splits(measure, probe, ref, target)
    computed = measure.compute(metrics, NET, Settings())
    assert computed["tests"].shift == 2  # the target's inputs are not a reweighting of the reference's
    got = measure.estimate(computed, reference())["shift_gated"]
    p, r, v = (metrics[s].compute() for s in ("probe", "train", "val"))
    assert torch.equal(r["heads"], _heads(r["logits"]))  # heads travel with their rows
    distances = tuple(neighbour_distances(p["heads"], s["heads"], 3) for s in (r, v))
    args = (r["logits"], r["labels"], r["features"], 0.3, 0.9, v["logits"], v["features"], fit_temperature(*ref))
    want = shift_estimate(*args, tests=computed["tests"], neighbours=distances)
    assert float(got.error) == pytest.approx(float(want.error), abs=1e-12)
    assert float(got.loss) == pytest.approx(float(want.loss), abs=1e-12)
    alone = shift_estimate(*args, tests=computed["tests"])
    assert float(want.error) > float(alone.error)  # the neighbours see what the transport does not
    del metrics["probe"]  # no probe: the transport alone
    assert float(measure.estimate(measure.compute(metrics, NET, Settings()), reference())["shift_gated"].error) == (
        pytest.approx(float(alone.error), abs=1e-12)
    )


def test_the_probe_as_reference_is_not_its_own_neighbour():
    (probe, labels), target = logit_data(3, 60, 3.0), logit_data(4, 50, 1.0)
    measure = ShiftTest(test_samples=40, permutations=30, neighbours=2)
    metrics = _three_splits(measure, (probe, labels), (probe, labels), target)
    metrics["probe"] = metrics["train"]
    computed = measure.compute(metrics, NET, Settings())
    p = metrics["train"].compute()
    want = neighbour_distances(p["heads"], p["heads"], 2, exclude_self=True)
    assert torch.allclose(computed["neighbours"][0], want) and bool((want > 0).all())


def _ddp_neighbour_estimates(rank: int, world_size: int) -> dict[str, float]:
    measure = ShiftTest(max_samples=60, permutations=20, neighbours=3)
    splits = [logit_data(30 + rank, 50 + 5 * rank, 3.0), logit_data(40 + rank, 45, 3.0), logit_data(50 + rank, 35, 1.0)]
    metrics = _three_splits(measure, *((z, y if i < 2 else None) for i, (z, y) in enumerate(splits)))
    return _flat(measure.estimate(measure.compute(metrics, NET, Settings()), reference()))


def test_two_ranks_with_output_layer_inputs_compute_what_one_process_computes_on_their_union():
    per_rank = run_ddp(_ddp_neighbour_estimates)
    assert per_rank[0] == per_rank[1]
    measure = ShiftTest(max_samples=60, permutations=20, neighbours=3)
    merged = {}
    for i, split in enumerate(("probe", "train", "val")):
        parts = []
        for rank in range(2):
            metric = measure.make_metric(NET, Settings(seed=7919 * rank))
            z, y = logit_data((30, 40, 50)[i] + rank, (50 + 5 * rank, 45, 35)[i], 1.0 if i == 2 else 3.0)
            _feed_heads(measure, metric, z, y if i < 2 else None)
            parts.append(metric)
        parts[0].merge_state(parts[1])
        merged[split] = parts[0]
    union = _flat(measure.estimate(measure.compute(merged, NET, Settings()), reference()))
    assert per_rank[0] == pytest.approx(union, rel=1e-12)
