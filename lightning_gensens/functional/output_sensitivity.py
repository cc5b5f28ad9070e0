"""Output sensitivity S before the softmax (Forouzesh et al., eq. 2) and its label-free loss (eq. 9)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lightning_gensens.utilities import check_finite_parameters


def _chan_merge(stats: Tensor) -> Tensor:
    """Merge rows (n, mean, M2) of streaming variance statistics into one (Chan et al.); exact and associative."""
    n, mean, m2 = stats[0, 0], stats[0, 1], stats[0, 2]
    for row in stats[1:]:
        n_b, mean_b, m2_b = row[0], row[1], row[2]
        total = n + n_b
        frac = torch.where(total > 0, n_b / total.clamp_min(1), torch.zeros_like(total))
        delta = mean_b - mean
        mean = mean + delta * frac
        m2 = m2 + m2_b + delta.square() * n * frac
        n = total
    return torch.stack([n, mean, m2])


def output_noise(
    model: nn.Module,
    x: Tensor,
    logits: Tensor | None = None,
    sigma: float = 0.1,
    n_draws: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """ε̄ = mean_k(f_k(x+ε) − f_k(x)) for ``n_draws`` draws ε ~ N(0, σ²I) per sample: Tensor[n_draws, B].

    ``logits`` = f(x) when the caller already has them (e.g. from the validation forward pass). Computed in
    float32 even under low-precision autocast.
    """
    device_type = x.device.type
    with torch.no_grad(), torch.autocast(device_type, enabled=False):
        if logits is None:
            logits = model(x)
        clean = logits.float().reshape(x.shape[0], -1).mean(dim=1)  # [B] outputs too
        draws = []
        for _ in range(n_draws):
            eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            draws.append(model(x + sigma * eps).float().reshape(x.shape[0], -1).mean(dim=1) - clean)
    return torch.stack(draws)


def _output_sensitivity_update(
    model: nn.Module,
    x: Tensor,
    logits: Tensor | None = None,
    sigma: float = 0.1,
    n_draws: int = 1,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Batch statistics: (n, mean, M2) of ε̄ and (Σx², numel(x)) for the inputs' second moment, in float64."""
    eps_bar = output_noise(model, x, logits, sigma, n_draws, generator).double().flatten()
    mean = eps_bar.mean()
    moments = torch.stack([eps_bar.new_tensor(eps_bar.numel()), mean, (eps_bar - mean).square().sum()])
    xd = x.detach().double()
    return moments, torch.stack([xd.square().sum(), xd.new_tensor(xd.numel())])


def _output_sensitivity_compute(moments: Tensor) -> Tensor:
    """S = Var_{x,ε}(ε̄) = M2 / n (eq. 2)."""
    if float(moments[0]) == 0:
        raise ValueError("output_sensitivity has no samples: the split was empty.")
    return moments[2] / moments[0]


def output_sensitivity(
    model: nn.Module, x: Tensor, sigma: float = 0.1, n_draws: int = 1, generator: torch.Generator | None = None
) -> Tensor:
    """S = Var_{x,ε}[mean_k(f_k(x+ε) − f_k(x))], ε ~ N(0, σ²I) (eq. 2), a Monte-Carlo estimate over ``x``."""
    check_finite_parameters(model)
    if x.shape[0] == 0:
        raise ValueError("output_sensitivity needs at least one sample.")
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be a positive finite number, got {sigma}.")
    moments, _ = _output_sensitivity_update(model, x, sigma=sigma, n_draws=n_draws, generator=generator)
    return _output_sensitivity_compute(moments)
