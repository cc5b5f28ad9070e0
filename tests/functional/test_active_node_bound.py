import math

import mpmath as mp
import numpy as np
import pytest
import torch
from torch import nn

from lightning_gensens.functional.active_node_bound import (
    _active_node_bound_compute,
    _active_node_bound_update,
    active_node_bound,
    active_node_counts,
    active_node_moments,
    log_abs_normal_moment,
    log_psi_star,
    relu_preactivations,
)
from lightning_gensens.models import small_cnn
from tests.helpers import toy_mlp


def mp_log_psi_star(k: int, mu: float, sigma: float) -> float:
    """50-digit reference: 2(k−1)·log σ + 2·log ₁F₁(−(k−1)/2; 1/2; −μ²/2σ²)."""
    with mp.workdps(50):
        n, mu_, sigma_ = k - 1, mp.mpf(mu), mp.mpf(sigma)
        return float(
            2 * n * mp.log(sigma_) + 2 * mp.log(mp.hyp1f1(-mp.mpf(n) / 2, mp.mpf(1) / 2, -(mu_**2) / (2 * sigma_**2)))
        )


def test_counts_match_manual_forward_with_inplace_relu():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(5, 7), nn.ReLU(inplace=True), nn.Linear(7, 6), nn.ReLU(inplace=True), nn.Linear(6, 3)
    ).double()
    x = torch.randn(11, 5, dtype=torch.float64)
    h1 = net[0](x)
    h2 = net[2](h1.relu())
    expected = (h1 > 0).sum(1) + (h2 > 0).sum(1)
    assert torch.equal(active_node_counts(net, x), expected)


def test_counts_on_relu_cnn_with_batchnorm():
    net = small_cnn(in_channels=1, side=4, width=3).eval()
    x = torch.randn(4, 1, 4, 4)
    pre = relu_preactivations(net, x)
    assert [tuple(h.shape) for h in pre] == [(4, 3, 4, 4), (4, 3, 4, 4)]
    assert torch.equal(active_node_counts(net, x), sum((h > 0).flatten(1).sum(1) for h in pre))


@pytest.mark.parametrize("activation", [nn.GELU, nn.Tanh])
def test_refuses_non_relu_naming_the_module(activation):
    with pytest.raises(ValueError, match=f"'1' is {activation.__name__}"):
        active_node_counts(toy_mlp(activation=activation), torch.randn(2, 5, dtype=torch.float64))


@pytest.mark.parametrize("k", [2, 3, 4, 5, 8, 11, 16, 21])
def test_log_psi_star_matches_mpmath(k):
    for mu in (0.0, 0.3, 1.0, 7.0, 50.0, 350.0, 2000.0, 10_000.0):
        for sigma in (0.5, 1.0, 3.0, 60.0, 500.0):
            ref = mp_log_psi_star(k, mu, sigma)
            got = float(log_psi_star(k, mu, sigma))
            assert abs(got - ref) <= 1e-13 * max(1.0, abs(ref)), (k, mu, sigma, got, ref)


def test_log_psi_star_on_both_sides_of_the_switch():
    sigma = 3.0
    mus = torch.tensor([11.99 * sigma, 12.0 * sigma, 12.01 * sigma], dtype=torch.float64)
    got = log_psi_star(11, mus, torch.tensor(sigma))
    ref = torch.tensor([mp_log_psi_star(11, float(m), sigma) for m in mus], dtype=torch.float64)
    torch.testing.assert_close(got, ref, rtol=1e-14, atol=0.0)


def test_log_psi_star_edge_cases():
    assert float(log_psi_star(1, 40.0, 2.0)) == 0.0
    assert float(log_psi_star(4, 0.0, 0.0)) == -math.inf
    n, mu = 3, 5.0
    limit = 2 * n * math.log(mu) + 2 * (0.5 * math.log(math.pi) - n / 2 * math.log(2) - math.lgamma((n + 1) / 2))
    assert math.isclose(float(log_psi_star(4, mu, 0.0)), limit, rel_tol=1e-14)
    assert math.isclose(float(log_psi_star(4, -mu, 1e-9)), limit, rel_tol=1e-14)
    out = log_psi_star(4, torch.tensor([100.0, 200.0]), torch.tensor(5.0))
    assert out.shape == (2,) and out.dtype == torch.float64
    with pytest.raises(ValueError, match="positive integer"):
        log_psi_star(0, 1.0, 1.0)
    with pytest.raises(ValueError, match="σ ≥ 0"):
        log_psi_star(3, 1.0, -1.0)


@pytest.mark.parametrize(("n", "r"), [(1, 0.0), (2, 0.7), (3, 1.5), (4, 3.0), (7, 0.4), (5, 12.5), (10, 20.0)])
def test_absolute_moment_formula_matches_monte_carlo(n, r):
    z = np.random.default_rng(n).standard_normal(1_000_000)
    sample = np.abs(r + z) ** n
    mean, stderr = sample.mean(), sample.std() / math.sqrt(sample.size)
    formula = math.exp(float(log_abs_normal_moment(n, r)))
    assert abs(formula - mean) < 4 * stderr, (formula, mean, stderr)


def test_statistics_are_exact_and_batch_additive():
    net = toy_mlp((6, 20, 15, 4), seed=1)
    x = torch.randn(50, 6, dtype=torch.float64)
    counts = active_node_counts(net, x).double()
    stats = [_active_node_bound_update(relu_preactivations(net, part)) for part in x.split(16)]
    count, total, total_sq = (sum(s[i] for s in stats) for i in range(3))
    assert count.dtype == total.dtype == total_sq.dtype == torch.int64
    mu, sigma = active_node_moments(count, total, total_sq)
    torch.testing.assert_close(mu, counts.mean(), rtol=1e-15, atol=0.0)
    torch.testing.assert_close(sigma, counts.std(correction=0), rtol=1e-12, atol=0.0)
    bound = _active_node_bound_compute(count, total, total_sq, num_layers=3)
    torch.testing.assert_close(bound, log_psi_star(3, counts.mean(), counts.std(correction=0)), rtol=1e-12, atol=0)
    torch.testing.assert_close(active_node_bound(net, x), bound, rtol=1e-12, atol=0.0)
    with pytest.raises(ValueError, match="empty"):
        active_node_moments(*(torch.tensor(0),) * 3)
