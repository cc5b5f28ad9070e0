"""Calibrated weight-perturbation disagreement: a label-free estimate of a split's error and loss (ours).

After the generalization disagreement equality (Jiang et al., ICLR 2022: the test error of a network is close to
its disagreement rate with an independently trained copy), with the independent copies replaced by K Gaussian
perturbations of the weights, θ_k(σ) = θ + σ·rms(W)·ε_k per weight tensor W, ε_k ~ N(0, I). On a labelled
reference, σ* is the scale at which the perturbed networks disagree with the network's own predictions as often as
the network errs there, D_ref(σ*) = e_ref; on a target split, the predicted error is D_tgt(σ*) and the predicted
loss is the network's cross-entropy against the perturbed networks' predictions at σ*,
C_tgt(σ*) = mean_{i,k} −log p_θ(ŷ_k(x_i) | x_i).
The same K perturbed networks (drawn from ``seed`` alone, on every DDP rank) score every sample and split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightning_gensens.utilities import check_finite_parameters

SIGMAS = (0.01, 0.017, 0.029, 0.05, 0.085, 0.14, 0.25, 0.42, 0.72, 1.2, 2.1, 3.5)
"""Default grid of relative perturbation scales σ (log-spaced)."""


def _check_sigmas(sigmas: Sequence[float]) -> Tensor:
    grid = torch.as_tensor(sigmas, dtype=torch.float64)
    if grid.dim() != 1 or grid.numel() < 2:
        raise ValueError(f"sigmas must be at least two scales, got {list(sigmas)}.")
    if not (bool(torch.isfinite(grid).all()) and bool((grid > 0).all()) and bool((grid.diff() > 0).all())):
        raise ValueError(f"sigmas must be positive, finite and increasing, got {list(sigmas)}.")
    return grid


def _draw_seed(seed: int, draw: int) -> int:
    return (seed * 1_000_003 + draw) % (1 << 63)


def _perturbation_update(
    net: nn.Module, x: Tensor, logits: Tensor, sigmas: Sequence[float], draws: int, seed: int
) -> Tensor:
    """Per scale σ_j, over the batch and the ``draws`` perturbed networks: [2, S] float64 sums of disagreements
    (ŷ_k ≠ ŷ) and of −log p(ŷ_k | x) under ``logits`` = f_θ(x); divide by B·draws for the rates. The weights are
    restored bit for bit."""
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}.")
    grid = _check_sigmas(sigmas)
    params = [p for p in net.parameters() if p.is_floating_point()]
    if not params:
        raise ValueError(f"{type(net).__name__} has no floating-point parameters to perturb.")
    sums = torch.zeros(2, grid.numel(), dtype=torch.float64, device=logits.device)
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        log_p = torch.log_softmax(logits.detach().double().flatten(1), dim=1)
        predicted = log_p.argmax(dim=1)
        saved = [p.detach().clone() for p in params]
        scales = [w.double().square().mean().sqrt().to(w.dtype) for w in saved]
        try:
            for k in range(draws):
                generators: dict[torch.device, torch.Generator] = {}
                noise = []
                for w, scale in zip(saved, scales, strict=True):
                    g = generators.get(w.device)
                    if g is None:  # the k-th network: the same on every rank, for every batch and split
                        g = generators[w.device] = torch.Generator(device=w.device).manual_seed(_draw_seed(seed, k))
                    noise.append(scale * torch.randn(w.shape, generator=g, device=w.device, dtype=w.dtype))
                for j, sigma in enumerate(grid.tolist()):
                    for p, w, e in zip(params, saved, noise, strict=True):
                        p.copy_(w + sigma * e)
                    votes = net(x).detach().flatten(1).argmax(dim=1)
                    sums[0, j] += (votes != predicted).sum()
                    sums[1, j] -= log_p.gather(1, votes[:, None]).sum()
        finally:
            for p, w in zip(params, saved, strict=True):
                p.copy_(w)
    return sums


def perturbation_curves(
    net: nn.Module, x: Tensor, sigmas: Sequence[float] = SIGMAS, draws: int = 8, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """(D(σ), C(σ)) [S] on the samples ``x``: the disagreement rate of the ``draws`` perturbed networks with the
    network's predictions and the network's cross-entropy against theirs, per scale of ``sigmas``."""
    check_finite_parameters(net)
    if x.shape[0] == 0:
        raise ValueError("perturbation_curves needs at least one sample.")
    with torch.no_grad():
        logits = net(x)
    sums = _perturbation_update(net, x, logits, sigmas, draws, seed)
    return sums[0] / (x.shape[0] * draws), sums[1] / (x.shape[0] * draws)


def calibrated_log_sigma(disagreement: Tensor, error: float | Tensor, sigmas: Sequence[float] = SIGMAS) -> Tensor:
    """log σ* where the reference's disagreement curve ``disagreement`` [S] (made non-decreasing by its running
    maximum) reaches the reference ``error``: linear interpolation in log σ, clamped to the grid's ends."""
    grid = _check_sigmas(sigmas).log().to(disagreement.device)
    curve = torch.cummax(disagreement.double(), dim=0).values
    e = float(error)
    if not (math.isfinite(e) and 0.0 <= e <= 1.0):
        raise ValueError(f"error must be a rate in [0, 1], got {e}.")
    if curve.shape != grid.shape:
        raise ValueError(f"disagreement must have one value per scale ({grid.numel()}), got {tuple(curve.shape)}.")
    if e <= float(curve[0]):
        return grid[0]
    if e >= float(curve[-1]):
        return grid[-1]
    j = int(torch.searchsorted(curve, torch.tensor(e, dtype=torch.float64, device=curve.device)))
    lo, hi = curve[j - 1], curve[j]
    share = (e - lo) / (hi - lo) if float(hi - lo) > 0 else torch.zeros((), dtype=torch.float64)
    return grid[j - 1] + share * (grid[j] - grid[j - 1])


def read_curve(curve: Tensor, log_sigma: Tensor, sigmas: Sequence[float] = SIGMAS) -> Tensor:
    """``curve`` [S] at log σ, by linear interpolation in log σ (the grid's ends beyond it)."""
    grid = _check_sigmas(sigmas).log().to(curve.device)
    t = float(log_sigma.clamp(float(grid[0]), float(grid[-1])))
    j = min(
        max(int(torch.searchsorted(grid, torch.tensor(t, dtype=torch.float64, device=grid.device))), 1), len(grid) - 1
    )
    share = (t - grid[j - 1]) / (grid[j] - grid[j - 1])
    return curve[j - 1].double() + share * (curve[j].double() - curve[j - 1].double())


def perturbation_disagreement(
    reference: tuple[Tensor, Tensor],
    reference_error: float | Tensor,
    target: tuple[Tensor, Tensor],
    sigmas: Sequence[float] = SIGMAS,
) -> tuple[Tensor, Tensor]:
    """(predicted error, predicted loss) of the target from its curves ``target`` = (D, C) and the labelled
    reference's curves and error: D_tgt(σ*) in [0, 1] and C_tgt(σ*) ≥ 0, with D_ref(σ*) = e_ref."""
    log_sigma = calibrated_log_sigma(reference[0], reference_error, sigmas)
    error = read_curve(target[0], log_sigma, sigmas).clamp(0.0, 1.0)
    return error, read_curve(target[1], log_sigma, sigmas).clamp_min(0.0)
