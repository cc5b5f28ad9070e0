"""The optimal-transport measure: its estimators against the functional layer, without reference labels, under 2-rank
DDP against one process."""

import math

import pytest
import torch
from torch import nn

from lightning_gensens.capture import Captured
from lightning_gensens.functional import (
    class_prior,
    cott_threshold,
    fit_temperature,
    label_shift_prior,
    transport_costs,
)
from lightning_gensens.measures import OptimalTransport, Reference, Settings
from lightning_gensens.metrics import LogitSample
from tests.helpers import run_ddp

NET = nn.Linear(3, 4)
ESTIMATORS = {
    "cot",
    "cot_em",
    "cott",
    "transport_loss",
    "transport_loss_ratio_em",
    "doe_ts",
}


def _data(seed: int, n: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(n, 4, generator=g, dtype=torch.float64)
    labels = torch.where(torch.rand(n, generator=g) < 0.6, logits.argmax(1), torch.randint(0, 4, (n,), generator=g))
    return logits, labels


def _feed(measure, metric, logits, labels, batch: int = 16) -> None:
    for start in range(0, logits.shape[0], batch):
        y = None if labels is None else labels[start : start + batch]
        measure.update(metric, Captured(x=torch.zeros(1, 3), logits=logits[start : start + batch], y=y), NET)


def _reference(loss: float = 0.9, error: float = 0.3) -> Reference:
    return Reference(torch.tensor(loss, dtype=torch.float64), torch.tensor(error, dtype=torch.float64), 4)


def _estimate(measure, ref_logits, ref_labels, target, reference):
    metrics = {split: measure.make_metric(NET, Settings()) for split in ("train", "val")}
    _feed(measure, metrics["train"], ref_logits, ref_labels)
    _feed(measure, metrics["val"], target, None)
    computed = measure.compute(metrics, NET, Settings())
    return measure.values(computed), measure.estimate(computed, reference)


def test_estimators_equal_the_functional_layer():
    (ref, labels), (target, _) = _data(0, 90, 3.0), _data(1, 70, 1.5)
    values, estimates = _estimate(OptimalTransport(), ref, labels, target, _reference())
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
    (ref, labels), (target, _) = _data(2, 40, 3.0), _data(3, 30, 1.0)
    values, estimates = _estimate(OptimalTransport(temperature_scaling=False), ref, labels, target, _reference())
    assert float(values["temperature"]) == 1.0
    assert float(estimates["cot"].error) == pytest.approx(float(transport_costs(target, class_prior(labels, 4)).mean()))


def test_an_unlabeled_reference_predicts_nothing_and_a_non_finite_one_only_the_label_free_part():
    (ref, labels), (target, _) = _data(4, 40, 3.0), _data(5, 30, 1.0)
    values, estimates = _estimate(OptimalTransport(), ref, None, target, _reference())
    assert values == {} and estimates == {}
    _, estimates = _estimate(OptimalTransport(), ref, labels, target, _reference(math.nan, math.nan))
    assert set(estimates) == {"cot", "cot_em", "transport_loss"}


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_samples"):
        OptimalTransport(max_samples=0)


def _ddp_estimates(rank: int, world_size: int) -> dict[str, float]:
    (ref, labels), (target, _) = _data(10 + rank, 50 + 7 * rank, 3.0), _data(20 + rank, 40 - 9 * rank, 1.0)
    measure = OptimalTransport(max_samples=60)
    _, estimates = _estimate(measure, ref, labels, target, _reference())
    return {name: float(e.loss if e.error is None else e.error) for name, e in estimates.items()}


def test_two_ranks_compute_what_one_process_computes_on_their_union():
    per_rank = run_ddp(_ddp_estimates)
    assert per_rank[0] == per_rank[1]  # every rank computes the same number
    measure = OptimalTransport(max_samples=60)
    merged = {}
    for split, seed_base, scale in (("train", 10, 3.0), ("val", 20, 1.0)):
        parts = []
        for rank in range(2):
            metric = LogitSample(max_samples=60, seed=7919 * rank)  # the sample rank `rank` keeps
            logits, labels = _data(seed_base + rank, (50 + 7 * rank) if split == "train" else (40 - 9 * rank), scale)
            _feed(measure, metric, logits, labels if split == "train" else None)
            parts.append(metric)
        parts[0].merge_state(parts[1])
        merged[split] = parts[0]
    computed = measure.compute(merged, NET, Settings())
    expected = {
        n: float(e.loss if e.error is None else e.error) for n, e in measure.estimate(computed, _reference()).items()
    }
    assert per_rank[0] == pytest.approx(expected, rel=1e-12)
