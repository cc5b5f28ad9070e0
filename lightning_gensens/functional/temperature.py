"""Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017) and the confidence
baselines on the temperature-scaled softmax p = softmax(z / T).

T is fitted by NLL on a labelled reference (:func:`fit_temperature`); the difference of confidences (DoC, Guillory
et al., ICCV 2021) and its loss side, the difference of entropies (DoE), are then read on the scaled softmax:

- DoC-TS: predicted error = e_ref + conf̄_ref − conf̄_tgt, conf = max_k p_k;
- DoE-TS: predicted loss = l_ref + H̄_tgt − H̄_ref, H = −Σ_k p_k log p_k (from ``log_softmax``).

At T = 1 they are DoC's error and loss (:func:`~lightning_gensens.functional.confidence.difference_of_confidences`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_gensens.functional.confidence import _check_finite, _check_logits, _check_scalar, _confidence_update

TEMPERATURE_BOUNDS = (0.05, 20.0)
"""The interval :func:`fit_temperature` searches (a reference it fits perfectly drives T to the lower end)."""
_NEWTON_STEPS = 100
_BETA_TOLERANCE = 1e-10


def _check_labels(labels: Tensor, num_classes: int, name: str = "labels") -> Tensor:
    if labels.dim() != 1 or labels.is_floating_point() or labels.is_complex():
        raise ValueError(
            f"{name} must be integer class indices of shape [N], got {labels.dtype} {tuple(labels.shape)}."
        )
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"{name} must lie in [0, {num_classes}), got values in [{int(labels.min())}, {int(labels.max())}]."
        )
    return labels.long()


def fit_temperature(logits: Tensor, labels: Tensor, bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> Tensor:
    """The temperature T in ``bounds`` minimising the mean NLL of softmax(z/T) on labelled ``logits`` [N, K]
    (Guo et al., ICML 2017). With β = 1/T the NLL f(β) = E[logsumexp(βz) − βz_y] is convex, f'(β) = E[E_p z − z_y]
    and f''(β) = E[Var_p z] (p = softmax(βz)): Newton steps on β, safeguarded by the bracket of the minimum (a step
    past it tries the bound it passes, once, then bisects), converge in a few vectorised passes."""
    return _fit_temperature(logits, labels, bounds)[0]


def _fit_temperature(
    logits: Tensor, labels: Tensor, bounds: tuple[float, float] = TEMPERATURE_BOUNDS
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`fit_temperature`'s T, and the mean confidence and mean entropy of softmax(z/T) (:func:`_scaled_means`)
    from its last pass. Each pass reads the logits less their row's maximum, d ≤ 0 (p = softmax(βd), and f' and f''
    are the same in d), as e = exp(βd) with S = Σ_k e_k: no softmax; the sample means f' and f'' need come from
    one 3 × 3 product, and the ones returned from S, conf = 1/S and H = log S − β E_p d."""
    z = _check_logits(logits)
    _check_finite(z, "logits")
    y = _check_labels(labels.to(z.device), z.shape[1])
    if y.shape[0] != z.shape[0]:
        raise ValueError(f"logits has {z.shape[0]} samples but labels {y.shape[0]}.")
    low, high = bounds
    if not 0 < low < high:
        raise ValueError(f"bounds must satisfy 0 < low < high, got {bounds}.")
    d = z - z.amax(1, keepdim=True)
    mean_d_y = float(d.gather(1, y[:, None]).mean())
    powers = torch.stack([torch.ones_like(d), d, d.square()])  # one product gives Σ_k e_k d^j, j = 0, 1, 2
    lower, upper, n = 1.0 / high, 1.0 / low, z.shape[0]
    lo, hi, beta = lower, upper, min(max(1.0, lower), upper)
    for _ in range(_NEWTON_STEPS):
        total, moments = _moments(d, powers, beta)
        gram = (moments @ moments[:2].T).tolist()  # Σ E_p d, Σ (E_p d)², Σ E_p d² in its first rows: one host read
        mean, mean_squared, second = gram[0][1] / n, gram[1][1] / n, gram[2][0] / n
        slope, curvature = mean - mean_d_y, second - mean_squared
        if (beta == upper and slope <= 0) or (beta == lower and slope >= 0):
            break  # the minimum lies at this bound
        lo, hi = (lo, beta) if slope > 0 else (beta, hi)
        step = beta - slope / curvature if curvature > 0 else (lower if slope > 0 else upper)
        if curvature > 0 and abs(step - beta) <= _BETA_TOLERANCE * max(beta, 1.0):
            break  # β is the minimum: a step rounded onto the bracket's end would bisect towards it for nothing
        # a step past the bracket tries the bound it passes once, else bisects
        new = step if lo < step < hi else (hi if step >= hi == upper else lo if step <= lo == lower else (lo + hi) / 2)
        if abs(new - beta) <= _BETA_TOLERANCE * max(beta, 1.0):
            break
        beta = new
    else:  # out of steps: the last pass was at the β before
        total, moments = _moments(d, powers, beta)
    return (
        torch.tensor(1.0 / beta, dtype=torch.float64),
        total.reciprocal().mean(),
        (total.log() - beta * moments[1]).mean(),
    )


def _moments(d: Tensor, powers: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """S = Σ_k exp(βd_k) [N], and 1, E_p d, E_p d² [3, N] of every sample (p = softmax(βd), ``powers``: d⁰, d¹, d²)."""
    sums = ((beta * d).exp_() * powers).sum(2)
    return sums[0], sums / sums[0]


def _scaled_logits(logits: Tensor, temperature: float | Tensor) -> Tensor:
    """z / T as float64, for finite ``logits`` [N, K] and a positive temperature."""
    z = _check_logits(logits)
    _check_finite(z, "logits")
    t = _check_scalar(temperature, "temperature")
    if t <= 0:
        raise ValueError(f"temperature must be positive, got {t}.")
    return z / t


def _scaled_log_probs(logits: Tensor, temperature: float | Tensor) -> Tensor:
    return torch.log_softmax(_scaled_logits(logits, temperature), dim=1)


def _scaled_means(logits: Tensor, temperature: float | Tensor) -> tuple[Tensor, Tensor]:
    """Mean max-softmax confidence and mean entropy of softmax(z/T), from one ``log_softmax``."""
    confidence, entropy = _confidence_update(_scaled_logits(logits, temperature))
    return confidence.mean(), entropy.mean()


def mean_entropy(logits: Tensor, temperature: float | Tensor = 1.0) -> Tensor:
    """Mean predictive entropy H̄ = E[−Σ_k p_k log p_k] of softmax(z/T) (float64)."""
    return _scaled_means(logits, temperature)[1]


def difference_of_entropies(
    reference_logits: Tensor, reference_loss: float | Tensor, logits: Tensor, temperature: float | Tensor = 1.0
) -> Tensor:
    """DoE: l_ref + H̄_tgt − H̄_ref on the temperature-scaled softmax (the loss side of DoC); clipped at 0."""
    loss = _check_scalar(reference_loss, "reference_loss")
    shift = mean_entropy(logits, temperature) - mean_entropy(reference_logits, temperature).to(logits.device)
    return (loss + shift).clamp_min(0.0)


def mean_confidence(logits: Tensor, temperature: float | Tensor = 1.0) -> Tensor:
    """Mean max-softmax confidence conf̄ = E[max_k p_k] of softmax(z/T) (float64)."""
    return _scaled_means(logits, temperature)[0]


def scaled_difference_of_confidences(
    reference_logits: Tensor, reference_error: float | Tensor, logits: Tensor, temperature: float | Tensor = 1.0
) -> Tensor:
    """DoC-TS: e_ref + conf̄_ref − conf̄_tgt on the temperature-scaled softmax; clipped to [0, 1]."""
    error = _check_scalar(reference_error, "reference_error", unit_interval=True)
    shift = mean_confidence(reference_logits, temperature).to(logits.device) - mean_confidence(logits, temperature)
    return (error + shift).clamp(0.0, 1.0)
