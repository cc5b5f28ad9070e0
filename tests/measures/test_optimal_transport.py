"""The optimal-transport measure: its estimators against the functional layer, without reference labels, under 2-rank
DDP against one process."""

import math

import pytest
import torch

from lightning_gensens.functional import (
    class_prior,
    cott_threshold,
    fit_temperature,
    label_shift_prior,
    transport_costs,
)
from lightning_gensens.measures import OptimalTransport
from tests.helpers import run_ddp
from tests.measures.logit_cases import estimate, logit_data, rank_estimates, reference, union_estimates

ESTIMATORS = {
    "cot",
    "cot_em",
    "cott",
    "transport_loss",
    "transport_loss_ratio_em",
}


def test_estimators_equal_the_functional_layer():
    (ref, labels), (target, _) = logit_data(0, 90, 3.0), logit_data(1, 70, 1.5)
    values, estimates = estimate(OptimalTransport(), ref, labels, target, reference())
    assert set(estimates) == ESTIMATORS
    t = values["temperature"]
    assert float(t) == pytest.approx(float(fit_temperature(ref, labels)), rel=1e-8)  # the same fit, other order
    prior = class_prior(labels, 4)
    em = label_shift_prior(target, prior, t)
    costs = transport_costs(target, prior, t)
    loss = transport_costs(target, prior, t, "loss").mean()
    ref_loss = transport_costs(ref, prior, t, "loss").mean()
    expected = {
        "cot": (None, costs.mean()),
        "cot_em": (None, transport_costs(target, em, t).mean()),
        "cott": (None, (costs > cott_threshold(transport_costs(ref, prior, t), 0.3)).double().mean()),
        "transport_loss": (loss, None),
        "transport_loss_ratio_em": (0.9 * transport_costs(target, em, t, "loss").mean() / ref_loss, None),
    }
    for name, (expected_loss, expected_error) in expected.items():
        got = estimates[name]
        for value, want in ((got.loss, expected_loss), (got.error, expected_error)):
            assert (value is None) == (want is None), name
            if want is not None:
                assert float(value) == pytest.approx(float(want), rel=1e-12), name


def test_without_temperature_scaling_the_temperature_is_one():
    (ref, labels), (target, _) = logit_data(2, 40, 3.0), logit_data(3, 30, 1.0)
    values, estimates = estimate(OptimalTransport(temperature_scaling=False), ref, labels, target, reference())
    assert float(values["temperature"]) == 1.0
    assert float(estimates["cot"].error) == pytest.approx(float(transport_costs(target, class_prior(labels, 4)).mean()))


def test_an_unlabeled_reference_predicts_nothing_and_a_non_finite_one_only_the_label_free_part():
    (ref, labels), (target, _) = logit_data(4, 40, 3.0), logit_data(5, 30, 1.0)
    values, estimates = estimate(OptimalTransport(), ref, None, target, reference())
    assert values == {} and estimates == {}
    _, estimates = estimate(OptimalTransport(), ref, labels, target, reference(math.nan, math.nan))
    assert set(estimates) == {"cot", "cot_em", "transport_loss"}


def test_a_reference_without_transport_loss_shifts_the_loss_by_the_pools_cost():
    (ref, labels), (target, _) = logit_data(6, 40, 3.0), logit_data(7, 30, 1.0)
    ref = 2000.0 * torch.nn.functional.one_hot(labels, 4).double()  # fitted without loss: W_ref = 0
    _, estimates = estimate(OptimalTransport(temperature_scaling=False), ref, labels, target, reference())
    em = label_shift_prior(target, class_prior(labels, 4))
    want = 0.9 + transport_costs(target, em, kind="loss").mean()
    assert float(estimates["transport_loss_ratio_em"].loss) == pytest.approx(float(want), rel=1e-12)


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_samples"):
        OptimalTransport(max_samples=0)


def _ddp_estimates(rank: int, world_size: int) -> dict[str, float]:
    return rank_estimates(OptimalTransport(max_samples=60), rank)


def test_two_ranks_compute_what_one_process_computes_on_their_union():
    per_rank = run_ddp(_ddp_estimates)
    assert per_rank[0] == per_rank[1]  # every rank computes the same number
    assert per_rank[0] == pytest.approx(union_estimates(OptimalTransport(max_samples=60)), rel=1e-12)
