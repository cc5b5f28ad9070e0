import math

import numpy as np
import pytest
import torch
from torch import nn

from lightning_gensens.functional import output_sensitivity
from lightning_gensens.functional.output_sensitivity import _chan_merge, output_noise


def test_matches_direct_variance_of_output_noise():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)).double()
    x = torch.randn(50, 6, dtype=torch.float64)
    s = output_sensitivity(net, x, sigma=0.2, n_draws=3, generator=torch.Generator().manual_seed(5))
    eps_bar = output_noise(net, x, sigma=0.2, n_draws=3, generator=torch.Generator().manual_seed(5))
    direct = np.var(eps_bar.double().numpy().ravel())  # population variance over (x, ε)
    assert math.isclose(float(s), direct, rel_tol=1e-9)


def test_closed_form_at_standard_normal_init():
    """Forouzesh eq. 10: S = (D/K)·(H/2)^M·σ² for bias-free ReLU nets with N(0, 1) weights (E over θ)."""
    d, h, m, k, sigma = 8, 16, 2, 4, 1e-3
    generator = torch.Generator().manual_seed(0)
    values = []
    for seed in range(300):
        torch.manual_seed(seed)
        net = nn.Sequential(
            nn.Linear(d, h, bias=False), nn.ReLU(), nn.Linear(h, h, bias=False), nn.ReLU(), nn.Linear(h, k, bias=False)
        ).double()
        for p in net.parameters():
            nn.init.normal_(p)
        values.append(
            float(
                output_sensitivity(
                    net, torch.randn(32, d, dtype=torch.float64), sigma=sigma, n_draws=4, generator=generator
                )
            )
        )
    mean, stderr = np.mean(values), np.std(values) / math.sqrt(len(values))
    closed = d / k * (h / 2) ** m * sigma**2
    assert abs(mean - closed) < 4 * stderr + 0.02 * closed, (mean, stderr, closed)


def test_chan_merge_is_exact():
    rng = np.random.default_rng(0)
    parts = [rng.normal(1e4, 1.0, size=n) for n in (7, 1, 30)]

    def stats(a):
        return torch.tensor([len(a), a.mean(), ((a - a.mean()) ** 2).sum()], dtype=torch.float64)

    merged = _chan_merge(torch.stack([stats(p) for p in parts] + [torch.zeros(3, dtype=torch.float64)]))
    whole = np.concatenate(parts)
    assert merged[0] == len(whole)
    assert math.isclose(float(merged[2] / merged[0]), whole.var(), rel_tol=1e-10)


def test_bad_input():
    net = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="at least one sample"):
        output_sensitivity(net, torch.zeros(0, 3))
    with pytest.raises(ValueError, match="sigma"):
        output_sensitivity(net, torch.zeros(2, 3), sigma=0.0)
    with torch.no_grad():
        net.weight.fill_(float("inf"))
    with pytest.raises(ValueError, match="NaN or Inf"):
        output_sensitivity(net, torch.zeros(2, 3))
