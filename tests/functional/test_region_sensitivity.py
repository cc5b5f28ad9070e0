import importlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_gensens.functional.active_node_bound import relu_preactivations
from lightning_gensens.functional.region_sensitivity import (
    _distinct_patterns,
    _region_patterns,
    _region_sensitivity_compute,
    _region_sensitivity_soft_compute,
    _region_sensitivity_update,
    count_activation_patterns,
    region_sensitivity,
)
from lightning_gensens.functional.tangent_sensitivity import tangent_sample_sensitivity
from lightning_gensens.models import small_cnn
from tests.helpers import toy_mlp

rs = importlib.import_module("lightning_gensens.functional.region_sensitivity")  # the module, not the function


def brute_soft(net: nn.Module, x: torch.Tensor, reference: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """Eq. 4 literally, with the softplus term: p(A|x) = Π σ(h)^a σ(−h)^(1−a), normalised over A+ per x."""
    pre = torch.cat([h.flatten(1) for h in relu_preactivations(net, x)], 1)
    tangent = tangent_sample_sensitivity(net, x, method="exact")
    pool = [(pre > 0, tangent)]
    if reference is not None:
        pool.append(
            (
                torch.cat([h.flatten(1) for h in relu_preactivations(net, reference)], 1) > 0,
                tangent_sample_sensitivity(net, reference, method="exact"),
            )
        )
    table: dict[tuple[bool, ...], float] = {}
    for patterns, t in pool:
        for a, ta in zip(patterns.tolist(), t.tolist(), strict=True):
            table[tuple(a)] = ta
    values = []
    for h in pre:
        logs = torch.stack(
            [
                (
                    torch.tensor(a, dtype=h.dtype) * F.logsigmoid(h)
                    + (1 - torch.tensor(a, dtype=h.dtype)) * F.logsigmoid(-h)
                ).sum()
                for a in table
            ]
        )
        weights = torch.softmax(logs / temperature, 0)
        values.append((weights * torch.tensor(list(table.values()), dtype=h.dtype)).sum())
    return torch.stack(values).mean()


def test_hard_is_mean_tangent_sensitivity():
    net, x = toy_mlp((6, 9, 8, 3), seed=1), torch.randn(30, 6, dtype=torch.float64)
    hard = region_sensitivity(net, x)
    assert hard.shape == () and hard.dtype == torch.float64
    torch.testing.assert_close(hard, tangent_sample_sensitivity(net, x).mean(), rtol=1e-13, atol=0.0)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_soft_matches_brute_force_eq4_with_streaming_chunks(monkeypatch, temperature):
    net = toy_mlp((4, 5, 4, 3), seed=2)
    x, ref = torch.randn(12, 4, dtype=torch.float64), torch.randn(9, 4, dtype=torch.float64)
    monkeypatch.setattr(rs, "_SAMPLE_CHUNK", 5)
    monkeypatch.setattr(rs, "_PATTERN_CHUNK", 3)
    got = region_sensitivity(net, x, mode="soft", temperature=temperature, reference=ref)
    torch.testing.assert_close(got, brute_soft(net, x, ref, temperature), rtol=1e-12, atol=0.0)
    torch.testing.assert_close(
        region_sensitivity(net, x, mode="soft", temperature=temperature),
        brute_soft(net, x, None, temperature),
        rtol=1e-12,
        atol=0.0,
    )


def test_soft_with_tiny_temperature_approaches_hard():
    net, x = toy_mlp((6, 12, 10, 4), seed=3), torch.randn(40, 6, dtype=torch.float64)
    hard = region_sensitivity(net, x, mode="hard")
    soft = region_sensitivity(net, x, mode="soft", temperature=1e-9, reference=torch.randn(40, 6).double())
    torch.testing.assert_close(soft, hard, rtol=1e-10, atol=0.0)
    assert not torch.isclose(region_sensitivity(net, x, mode="soft", temperature=10.0), hard, rtol=1e-3)


def test_batched_statistics_equal_the_public_function():
    net = toy_mlp((6, 12, 10, 4), seed=4)
    x, ref = torch.randn(50, 6, dtype=torch.float64), torch.randn(20, 6, dtype=torch.float64)
    parts = [_region_sensitivity_update(net, relu_preactivations(net, p)) for p in x.split(16)]
    pre, tangent = torch.cat([p for p, _ in parts]), torch.cat([t for _, t in parts])
    assert pre.shape == (50, 22) and tangent.dtype == torch.float64
    hard = _region_sensitivity_compute(sum(t.sum() for _, t in parts), torch.tensor(50))
    torch.testing.assert_close(hard, region_sensitivity(net, x), rtol=1e-13, atol=0.0)
    ref_patterns, ref_tangent = _region_patterns(
        *(lambda p, t: (p > 0, t))(*_region_sensitivity_update(net, relu_preactivations(net, ref)))
    )
    soft = _region_sensitivity_soft_compute(pre, tangent, ref_patterns, ref_tangent, temperature=2.0)
    torch.testing.assert_close(
        soft, region_sensitivity(net, x, mode="soft", temperature=2.0, reference=ref), rtol=1e-13, atol=0.0
    )


def test_pattern_deduplication_and_counting():
    net = toy_mlp((3, 4, 3, 2), seed=5)
    base = torch.randn(10, 3, dtype=torch.float64)
    x = torch.cat([base, base[:4] + 1e-9, base[:2]])
    pre, tangent = _region_sensitivity_update(net, relu_preactivations(net, x))
    expected = len({tuple(row) for row in (pre > 0).tolist()})
    assert int(count_activation_patterns(net, x)) == expected == int(_distinct_patterns(pre))
    patterns, pattern_tangent = _region_patterns(pre > 0, tangent)
    assert patterns.dtype == torch.bool and patterns.shape == (expected, 7)
    for a, t in zip(pre > 0, tangent, strict=True):
        row = (patterns == a).all(1).nonzero().item()
        torch.testing.assert_close(pattern_tangent[row], t, rtol=1e-13, atol=0.0)


def test_refusals_and_cnn_pattern_count():
    with pytest.raises(ValueError, match="'1' is GELU"):
        region_sensitivity(toy_mlp(activation=nn.GELU), torch.randn(3, 5, dtype=torch.float64))
    cnn, x = small_cnn(in_channels=1, side=4, width=3), torch.randn(5, 1, 4, 4)
    with pytest.raises(ValueError, match="'0' is Conv2d"):
        region_sensitivity(cnn, x)
    assert 1 <= int(count_activation_patterns(cnn, x)) <= 5
    net = toy_mlp((5, 6, 3))
    with pytest.raises(ValueError, match="mode"):
        region_sensitivity(net, torch.randn(2, 5, dtype=torch.float64), mode="medium")
    with pytest.raises(ValueError, match="temperature"):
        region_sensitivity(net, torch.randn(2, 5, dtype=torch.float64), mode="soft", temperature=0.0)
    with pytest.raises(ValueError, match="at least one sample"):
        region_sensitivity(net, torch.zeros(0, 5, dtype=torch.float64))
