"""A small MetricTester (after torchmetrics' ``tests/unittests/_helpers/testers.py``): one toy case per Metric of
``lightning_gensens.metrics.__all__``, and the checks every Metric must pass (see ``test_harness.py``).

A case gives, per DDP rank, a model and a list of raw batches (different data on every rank), and turns a
(model, batch) pair into the arguments of ``update``. "One process on the concatenated data" is one metric updated
with rank 0's batches (rank 0's model), then rank 1's (rank 1's model): for the weight-only metrics the ranks hold
different weights, and the documented value is the average over updates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

import lightning_gensens.metrics as metrics
from lightning_gensens.functional import log_linf_sensitivity_bound, log_spectral_norm_product
from lightning_gensens.functional.active_node_bound import relu_preactivations
from tests.helpers import toy_mlp

Batch = tuple[Tensor, Tensor]
Result = Tensor | dict[str, Tensor]

WORLD_SIZE = 2
BATCH_SIZES = ((9, 4), (13, 6, 3))
"""Batch sizes of each rank: different amounts and different data per rank."""

INPUT_DIM = 5


def batches(rank: int, dtype: torch.dtype = torch.float64) -> list[Batch]:
    """Rank ``rank``'s raw (x, y) batches."""
    g = torch.Generator().manual_seed(100 + rank)
    return [
        (torch.randn(n, INPUT_DIM, generator=g, dtype=torch.float64).to(dtype), torch.randint(0, 3, (n,), generator=g))
        for n in BATCH_SIZES[rank]
    ]


def _relu_net(rank: int) -> nn.Module:
    return toy_mlp()


def _tanh_net(rank: int) -> nn.Module:
    return toy_mlp(activation=nn.Tanh)  # relative flatness: the generic (Lanczos, Hutch++) paths too


def _rank_net(rank: int) -> nn.Module:
    return toy_mlp(seed=rank)  # weight-only metrics: every rank holds other weights


def _no_grad_logits(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x)


@dataclass(frozen=True)
class Case:
    """One Metric under test.

    Args:
        name: the class name in ``lightning_gensens.metrics``.
        make: ``make(seed_rank, **kwargs)`` builds the metric; ``seed_rank`` shifts a private seed the way DDP rank
            ``seed_rank`` would (``seed + 7919·rank``), so one process can reproduce each rank's noise.
        net: the model of a rank (float64; the harness casts it).
        args: the arguments of ``update`` for a model and a raw batch.
        seeded: draws noise from a per-rank generator: the one-process reference of DDP is then one metric per
            rank (seeded as that rank) merged with ``merge_state`` in rank order.
        keeps_model: keeps a (weak) reference to the model between ``update`` and ``compute``.
        rtol: tolerance of DDP against one process (summation order; Lanczos on reduced Hessian products).
        expected: the documented value on the ranks' models and batches, checked against DDP.
    """

    name: str
    make: Callable[..., Metric]
    net: Callable[[int], nn.Module]
    args: Callable[[nn.Module, Batch], tuple[Any, ...]]
    seeded: bool = False
    keeps_model: bool = False
    rtol: float = 1e-12
    expected: Callable[[Sequence[nn.Module], Sequence[list[Batch]]], Result] | None = field(default=None)

    def metric(self, seed_rank: int = 0, **kwargs: Any) -> Metric:
        return self.make(seed_rank, **kwargs)

    def model(self, rank: int, dtype: torch.dtype = torch.float64) -> nn.Module:
        return self.net(rank).to(dtype)

    def __str__(self) -> str:
        return self.name


def _average_over_updates(fn: Callable[[nn.Module], Tensor]) -> Callable[..., Tensor]:
    def expected(models: Sequence[nn.Module], rank_batches: Sequence[list[Batch]]) -> Tensor:
        values = [fn(model) for model, bs in zip(models, rank_batches, strict=True) for _ in bs]
        return torch.stack(values).mean()

    return expected


def _linf_expected(models: Sequence[nn.Module], rank_batches: Sequence[list[Batch]]) -> dict[str, Tensor]:
    return {
        "log_bound": _average_over_updates(lambda m: log_linf_sensitivity_bound(m, INPUT_DIM))(models, rank_batches)
    }


CASES: dict[str, Case] = {
    case.name: case
    for case in (
        Case(
            "ActiveNodeBound",
            lambda r, **kw: metrics.ActiveNodeBound(num_layers=3, **kw),
            _relu_net,
            lambda m, b: (relu_preactivations(m, b[0]),),
        ),
        Case(
            "ConfidenceStatistics",
            lambda r, **kw: metrics.ConfidenceStatistics(**kw),
            _relu_net,
            lambda m, b: (_no_grad_logits(m, b[0]),),
        ),
        Case(
            "FisherRaoNorm",
            lambda r, **kw: metrics.FisherRaoNorm(**kw),
            _relu_net,
            lambda m, b: (_no_grad_logits(m, b[0]),),
        ),
        Case(
            "InputGradientNorm",
            lambda r, **kw: metrics.InputGradientNorm(q=(1, 2), keep=12, **kw),
            _relu_net,
            lambda m, b: (m, b[0], b[1]),
        ),
        Case(
            "InputSample",
            lambda r, **kw: metrics.InputSample(max_samples=12, seed=5 + 7919 * r, **kw),
            _relu_net,
            lambda m, b: (_no_grad_logits(m, b[0]), b[1], b[0], 2 * b[0]),  # inputs and output-layer inputs
            seeded=True,
        ),
        Case("JacobianNorm", lambda r, **kw: metrics.JacobianNorm(**kw), _relu_net, lambda m, b: (m, b[0])),
        Case(
            "LinfNorm",
            lambda r, **kw: metrics.LinfNorm(**kw),
            _rank_net,
            lambda m, b: (m, INPUT_DIM),
            expected=_linf_expected,
        ),
        Case(
            "LogitSample",
            lambda r, **kw: metrics.LogitSample(max_samples=12, seed=5 + 7919 * r, **kw),
            _relu_net,
            lambda m, b: (_no_grad_logits(m, b[0]), b[1]),
            seeded=True,
        ),
        Case(
            "OutputSensitivity",
            lambda r, **kw: metrics.OutputSensitivity(sigma=0.3, n_draws=2, seed=11 + 7919 * r, **kw),
            _relu_net,
            lambda m, b: (m, b[0]),
            seeded=True,
        ),
        Case(
            "PerturbationDisagreement",
            lambda r, **kw: metrics.PerturbationDisagreement(sigmas=(0.1, 1.0, 3.0), draws=2, seed=3, **kw),
            _relu_net,
            lambda m, b: (m, b[0], _no_grad_logits(m, b[0])),
        ),
        Case(
            "PredictionSample",
            lambda r, **kw: metrics.PredictionSample(max_samples=12, seed=5 + 7919 * r, **kw),
            _relu_net,
            lambda m, b: (_no_grad_logits(m, b[0]), b[1]),
            seeded=True,
        ),
        Case(
            "RegionSensitivity",
            lambda r, **kw: metrics.RegionSensitivity(mode="soft", temperature=0.5, **kw),
            _relu_net,
            lambda m, b: (m, relu_preactivations(m, b[0])),
        ),
        Case(
            "RelativeFlatness",
            lambda r, **kw: metrics.RelativeFlatness(seed=3, **kw),
            _tanh_net,
            lambda m, b: (m, b[0], b[1]),
            keeps_model=True,
            rtol=1e-6,
        ),
        Case(
            "SplitLoss",
            lambda r, **kw: metrics.SplitLoss(torch.nn.functional.cross_entropy, **kw),
            _relu_net,
            lambda m, b: (_no_grad_logits(m, b[0]), b[1]),
        ),
        Case(
            "SpectralNorm",
            lambda r, **kw: metrics.SpectralNorm(**kw),
            _rank_net,
            lambda m, b: (m,),
            expected=_average_over_updates(log_spectral_norm_product),
        ),
        Case(
            "TangentSensitivity",
            lambda r, **kw: metrics.TangentSensitivity(**kw),
            _relu_net,
            lambda m, b: (m, b[0], relu_preactivations(m, b[0])),
        ),
    )
}


def sequence(case: Case, dtype: torch.dtype = torch.float64) -> tuple[list[nn.Module], list[tuple[Any, ...]]]:
    """The models of every rank and the update arguments of the concatenated data: rank 0's batches, then rank 1's.

    The models are returned so that the caller keeps them alive (a metric may hold only a weak reference).
    """
    models = [case.model(r, dtype) for r in range(WORLD_SIZE)]
    calls = [case.args(models[r], b) for r in range(WORLD_SIZE) for b in batches(r, dtype)]
    return models, calls


def one_process(case: Case) -> Result:
    """The value a single process gets on the concatenated data (merged per-rank metrics for seeded cases)."""
    models = [case.model(r) for r in range(WORLD_SIZE)]
    if not case.seeded:
        metric = case.metric()
        for r in range(WORLD_SIZE):
            for b in batches(r):
                metric.update(*case.args(models[r], b))
        return metric.compute()
    per_rank = [case.metric(r) for r in range(WORLD_SIZE)]
    for r, metric in enumerate(per_rank):
        for b in batches(r):
            metric.update(*case.args(models[r], b))
    for metric in per_rank[1:]:
        per_rank[0].merge_state(metric)
    return per_rank[0].compute()


def ddp_rank(rank: int, world_size: int, name: str) -> Result:
    """What rank ``rank`` computes: its own model and batches, reduced over the gloo group by ``compute``."""
    case = CASES[name]
    model = case.model(rank)
    metric = case.metric()
    for b in batches(rank):
        metric.update(*case.args(model, b))
    return metric.compute()


def assert_same(got: Result, expected: Result, rtol: float = 0.0) -> None:
    """Equal values, keys (in order), dtypes and shapes: bitwise for ``rtol=0``, else within ``rtol`` (no atol)."""
    if isinstance(expected, dict):
        assert isinstance(got, dict), f"expected a dict, got {type(got).__name__}"
        assert list(got) == list(expected)
        for key in expected:
            assert_same(got[key], expected[key], rtol)
        return
    assert isinstance(got, Tensor) and isinstance(expected, Tensor)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    if rtol == 0:
        assert torch.equal(got, expected), f"{got} != {expected}"
    else:
        torch.testing.assert_close(got, expected, rtol=rtol, atol=0)


def assert_states_equal(a: Metric, b: Metric) -> None:
    """Every registered state of ``a`` equals ``b``'s, bitwise (lists element by element)."""
    assert list(a.metric_state) == list(b.metric_state)
    for name, value in a.metric_state.items():
        other = b.metric_state[name]
        if isinstance(value, Tensor):
            assert isinstance(other, Tensor) and value.dtype == other.dtype and torch.equal(value, other), name
        else:
            assert isinstance(other, list) and len(value) == len(other), name
            for v, o in zip(value, other, strict=True):
                assert v.dtype == o.dtype and torch.equal(v, o), name
