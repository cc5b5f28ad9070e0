"""Agreement-on-the-line: a target split's accuracy from the agreement of several checkpoints of one model (Baek et
al., "Agreement-on-the-Line: Predicting the Performance of Neural Networks under Distribution Shift", NeurIPS 2022).

For checkpoints i ≠ j, agr_ij is the share of samples on which their argmax predictions agree, on the labelled
reference (agr_ref) and on the unlabelled target (agr_tgt); acc_i is checkpoint i's reference accuracy. In probit
space Φ⁻¹ the target agreements lie on a line of the reference ones, and (the paper's finding) the accuracies lie on
the same line. ALine-D (§5.3, Algorithm 1) fits its slope by least squares over pairs,

    Φ⁻¹(agr_tgt,ij) = a·Φ⁻¹(agr_ref,ij) + b,

then solves, by least squares over all pairs i < j, for the targets' probit accuracies x:

    (x_i + x_j)/2 = Φ⁻¹(agr_tgt,ij) + a·[(Φ⁻¹(acc_i) + Φ⁻¹(acc_j))/2 − Φ⁻¹(agr_ref,ij)];

checkpoint i's target accuracy is Φ(x_i). C checkpoints give C(C−1)/2 equations in C unknowns: C ≥ 3 determine x.
Rates are clipped to [ε, 1 − ε] before Φ⁻¹ (a rate of 0 or 1 has no probit).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_gensens.functional.confidence import _check_finite, _check_scalar

MIN_CHECKPOINTS = 3
"""ALine-D's system determines every checkpoint's accuracy from three checkpoints on."""


def agreement_rates(predictions: Tensor) -> Tensor:
    """Pairwise agreement A_ij = share of samples on which checkpoints i and j predict the same class, from class
    ``predictions`` [C, N] of C checkpoints on the same N samples (float64 [C, C], ones on the diagonal)."""
    if predictions.dim() != 2 or predictions.is_floating_point() or predictions.is_complex():
        raise ValueError(
            f"predictions must be integer classes of shape [C, N], got {predictions.dtype} {tuple(predictions.shape)}."
        )
    if predictions.shape[1] == 0:
        raise ValueError("predictions hold no samples.")
    same = predictions[:, None, :] == predictions[None, :, :]
    return same.to(torch.float64).mean(dim=2)


def _probit(rates: Tensor, eps: float, name: str) -> Tensor:
    rates = rates.detach().to(torch.float64)
    _check_finite(rates, name)
    if bool(((rates < 0) | (rates > 1)).any()):
        raise ValueError(f"{name} must lie in [0, 1].")
    return torch.special.ndtri(rates.clamp(eps, 1.0 - eps))


def _slope(x: Tensor, y: Tensor) -> Tensor:
    """The least-squares slope of y on x; 0 where x does not vary (no line to fit)."""
    dx = x - x.mean()
    spread = (dx * dx).sum()
    return (dx * (y - y.mean())).sum() / spread if bool(spread > 0) else spread


def aline_d(
    reference_agreement: Tensor, target_agreement: Tensor, reference_accuracy: Tensor, eps: float = 1e-4
) -> Tensor:
    """Each checkpoint's predicted target accuracy Φ(x_i) by ALine-D (Baek et al. 2022, §5.3) from the pairwise
    agreement rates [C, C] on the reference and on the target and the reference accuracies [C] of C ≥ 3
    checkpoints (float64 [C]); only the pairs i < j are read, rates are clipped to [``eps``, 1 − ``eps``]."""
    eps = _check_scalar(eps, "eps")
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must lie in (0, 0.5), got {eps}.")
    c = reference_accuracy.shape[0] if reference_accuracy.dim() == 1 else -1
    if c < 0 or reference_agreement.shape != (c, c) or target_agreement.shape != (c, c):
        raise ValueError(
            "reference_agreement and target_agreement must be [C, C] and reference_accuracy [C], got "
            f"{tuple(reference_agreement.shape)}, {tuple(target_agreement.shape)}, {tuple(reference_accuracy.shape)}."
        )
    if c < MIN_CHECKPOINTS:
        raise ValueError(f"ALine-D needs at least {MIN_CHECKPOINTS} checkpoints, got {c}.")
    i, j = torch.triu_indices(c, c, offset=1)
    ref = _probit(reference_agreement.cpu(), eps, "reference_agreement")[i, j]
    tgt = _probit(target_agreement.cpu(), eps, "target_agreement")[i, j]
    acc = _probit(reference_accuracy.cpu(), eps, "reference_accuracy")
    slope = _slope(ref, tgt)
    rhs = tgt + slope * ((acc[i] + acc[j]) / 2 - ref)
    # the least-squares solution of (x_i + x_j)/2 = rhs_ij over all pairs, in closed form (the normal equations'
    # matrix is ((C − 2)·I + 11ᵀ)/4): x_i = (2·s_i − S/(C − 1))/(C − 2), s_i = Σ_j rhs_ij, S = Σ_i s_i
    sums = torch.zeros(c, dtype=torch.float64).index_add_(0, i, rhs).index_add_(0, j, rhs)
    x = (2 * sums - sums.sum() / (c - 1)) / (c - 2)
    return torch.special.ndtr(x).to(reference_accuracy.device)
