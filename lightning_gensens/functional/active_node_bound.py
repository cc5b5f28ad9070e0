"""Active-node bound ψ*(k, μ, σ) of Daróczy's Theorem 3.2 and eq. 6.

c(x) is the number of hidden ReLU units with a positive pre-activation (the paper's T(x)); μ and σ are its mean
and standard deviation over a split, and ψ*(k, μ, σ) = σ^{2(k−1)}·₁F₁(−(k−1)/2; 1/2; −μ²/2σ²)², where k is the
number of weight layers. With n = k−1 and X ~ N(μ, σ²), σⁿ·₁F₁(−n/2; 1/2; −μ²/2σ²) = E|X|ⁿ·√π/(2^{n/2}Γ((n+1)/2))
(Winkelbauer), which gives a form that neither overflows nor cancels for large μ/σ.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy.special import gammaln, hyp1f1
from torch import Tensor, nn

from lightning_gensens.capture import ForwardCapture
from lightning_gensens.utilities import check_finite_parameters, evaluation_mode, weight_layers

_KUMMER_MAX_RATIO = 12.0
"""μ/σ up to which SciPy's ₁F₁ is used (≤ 4e-15 in log against mpmath for n ≤ 20); beyond, the odd-n remainder
2∫₀^∞ tⁿφ(t+r)dt of E|r+Z|ⁿ is below e^{−72} relative and the binomial series is exact."""


def relu_preactivations(model: nn.Module, x: Tensor, measure: str = "relu_preactivations") -> list[Tensor]:
    """Pre-activations entering every ``nn.ReLU`` call of ``model(x)``, in call order, each [B, ...].

    Read by :class:`~lightning_gensens.capture.ForwardCapture` (forward pre-hooks, correct with ``inplace=True``;
    handles always removed). Raises naming the module when the network has a non-ReLU activation.
    """
    with torch.no_grad(), ForwardCapture(model, preactivations=True, measure=measure) as capture:
        model(x)
        record = capture.pop()
    if record is None:  # the forward pass above always records one; kept explicit for the type checker
        raise RuntimeError(f"{measure}: the forward pass of {type(model).__name__} was not captured.")
    return record.preacts


def _active_counts(preactivations: Sequence[Tensor]) -> Tensor:
    """c(x) = Σ_l 1[h_l(x) > 0] over all captured units: Tensor[B] (int64)."""
    if not preactivations:
        raise ValueError("no ReLU pre-activations were captured: the network has no hidden nn.ReLU unit.")
    counts = (preactivations[0].flatten(1) > 0).sum(1)
    for h in preactivations[1:]:
        counts = counts + (h.flatten(1) > 0).sum(1)
    return counts


def active_node_counts(model: nn.Module, x: Tensor) -> Tensor:
    """Number of hidden ReLU units with pre-activation > 0 per sample (the T(x) of Theorem 3.2): Tensor[B].

    Evaluated in eval mode; refuses networks with non-ReLU activations.
    """
    check_finite_parameters(model)
    with evaluation_mode(model):
        return _active_counts(relu_preactivations(model, x, "active_node_bound"))


def _log_kummer(n: int, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """log(σⁿ·₁F₁(−n/2; 1/2; −μ²/2σ²)) = ½ log ψ*(n+1, μ, σ), elementwise, float64."""
    mu, sigma = np.abs(mu), np.asarray(sigma, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        small = (sigma > 0) & (mu <= _KUMMER_MAX_RATIO * sigma)
        ratio = np.where(small, mu / sigma, 0.0)
        kummer = n * np.log(sigma) + np.log(hyp1f1(-n / 2, 0.5, -(ratio**2) / 2))
        # μ > 12σ (or σ = 0): σⁿ·E|r+Z|ⁿ = μⁿ·Σ_m C(n,2m)(2m−1)!!(σ/μ)^{2m}, all terms positive.
        t = np.where(small, 0.0, sigma / np.where(mu > 0, mu, 1.0))
        m = np.arange(n // 2 + 1)
        log_coef = gammaln(n + 1) - gammaln(n - 2 * m + 1) - m * math.log(2) - gammaln(m + 1)
        series = (np.exp(log_coef) * t[..., None] ** (2 * m)).sum(-1)
        const = 0.5 * math.log(math.pi) - n / 2 * math.log(2) - gammaln((n + 1) / 2)
        moment = n * np.log(mu) + np.log(series) + const
    return np.where(small, kummer, moment)


def _as_array(value: float | Tensor) -> np.ndarray:
    return torch.as_tensor(value, dtype=torch.float64).detach().cpu().numpy()


def log_psi_star(k: int, mu: float | Tensor, sigma: float | Tensor) -> Tensor:
    """log ψ*(k, μ, σ) = 2(k−1)·log σ + 2·log ₁F₁(−(k−1)/2; 1/2; −μ²/2σ²) (eq. 6), float64, broadcast over μ, σ.

    SciPy's ₁F₁ where μ ≤ 12σ, the exact positive series of σⁿE|μ/σ+Z|ⁿ in log space beyond (and at σ = 0,
    the limit 2n·log|μ| + 2·log(√π/(2^{n/2}Γ((n+1)/2)))). Verified against 50-digit mpmath for k ≤ 21,
    μ ≤ 10⁴, σ ≥ 0.5. Returned on the device of ``mu`` (or ``sigma``) when a tensor.
    """
    if int(k) != k or k < 1:
        raise ValueError(f"k (the number of weight layers) must be a positive integer, got {k}.")
    n = int(k) - 1
    mu_a, sigma_a = np.broadcast_arrays(_as_array(mu), _as_array(sigma))
    if (sigma_a < 0).any() or not (np.isfinite(mu_a).all() and np.isfinite(sigma_a).all()):
        raise ValueError("log_psi_star needs finite μ and σ ≥ 0.")
    device = next((v.device for v in (mu, sigma) if isinstance(v, Tensor)), torch.device("cpu"))
    if n == 0:
        return torch.zeros(mu_a.shape, dtype=torch.float64, device=device)
    return torch.as_tensor(2 * _log_kummer(n, mu_a, sigma_a), dtype=torch.float64, device=device)


def log_abs_normal_moment(n: int, r: float | Tensor) -> Tensor:
    """log E|r+Z|ⁿ, Z ~ N(0, 1): the absolute moment behind Theorem 3.2 (Winkelbauer's ₁F₁ formula)."""
    if int(n) != n or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n}.")
    r_a = _as_array(r)
    const = 0.5 * math.log(math.pi) - n / 2 * math.log(2) - float(gammaln((n + 1) / 2))
    log_f = _log_kummer(int(n), r_a, np.ones_like(r_a)) if n else np.zeros_like(r_a)
    return torch.as_tensor(log_f - const, dtype=torch.float64, device=r.device if isinstance(r, Tensor) else None)


def _active_node_bound_update(preactivations: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Batch statistics of c(x) from captured ReLU pre-activations (one [B, ...] per nn.ReLU, forward order).

    Returns int64 0-dim tensors (n, Σc, Σc²) on the pre-activations' device: exact, sum-reducible.
    """
    counts = _active_counts(preactivations)
    return counts.new_tensor(counts.numel()), counts.sum(), counts.square().sum()


def active_node_moments(count: Tensor, total: Tensor, total_sq: Tensor) -> tuple[Tensor, Tensor]:
    """μ and σ of c(x) (population standard deviation, the Gaussian fit of Theorem 3.2) in float64."""
    n, s, ss = int(count), int(total), int(total_sq)  # Python integers: n·Σc² − (Σc)² is exact, never overflows
    if n == 0:
        raise ValueError("active_node_bound has no samples: the split was empty.")
    moments = torch.tensor([s / n, math.sqrt((n * ss - s * s) / n**2)], dtype=torch.float64, device=count.device)
    return moments[0], moments[1]


def _active_node_bound_compute(count: Tensor, total: Tensor, total_sq: Tensor, num_layers: int) -> Tensor:
    """log ψ*(k, μ, σ) (eq. 6) from the summed statistics; ``num_layers`` = k, the number of weight layers."""
    mu, sigma = active_node_moments(count, total, total_sq)
    return log_psi_star(num_layers, mu, sigma)


def active_node_bound(model: nn.Module, x: Tensor) -> Tensor:
    """log ψ*(k, μ, σ) of c(x) over the samples ``x`` (eq. 6), k = the model's number of weight layers."""
    check_finite_parameters(model)
    with evaluation_mode(model):
        stats = _active_node_bound_update(relu_preactivations(model, x, "active_node_bound"))
    return _active_node_bound_compute(*stats, num_layers=len(weight_layers(model)))
