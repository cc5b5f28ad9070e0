"""Label-free Fisher–Rao norm Σ_j E_x[⟨∂L(f, j)/∂f, f⟩²] (Liang et al. Thm 3.1; Daróczy 2022, eq. 10).

For the cross-entropy L(f, j) = logsumexp(f) − f_j, ∂L(f, j)/∂f = softmax(f) − e_j, so the inner product is
⟨softmax(f), f⟩ − f_j; the label is summed over all K classes and the constant factor (k+1)² is dropped.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_gensens.utilities import check_finite_parameters, evaluation_mode


def _fisher_rao_terms(logits: Tensor) -> Tensor:
    """Σ_j (⟨softmax(f), f⟩ − f_j)² per sample from the logits [B, K], in float64: Tensor[B]."""
    if logits.dim() != 2:
        raise ValueError(f"fisher_rao_norm needs logits of shape [B, K], got {tuple(logits.shape)}.")
    f = logits.detach().double()
    mean = (f.softmax(1) * f).sum(1, keepdim=True)
    return (mean - f).square().sum(1)


def fisher_rao_norm_per_sample(model: nn.Module, x: Tensor) -> Tensor:
    """Σ_j ⟨∂L(f(x), j)/∂f, f(x)⟩² per sample (cross-entropy), Tensor[B] float64, one forward in eval mode."""
    check_finite_parameters(model)
    with evaluation_mode(model), torch.no_grad():
        return _fisher_rao_terms(model(x))


def fisher_rao_norm(model: nn.Module, x: Tensor) -> Tensor:
    """Σ_j E_x[⟨∂L(f, j)/∂f, f⟩²] over the samples ``x`` (Daróczy 2022, eq. 10), 0-dim float64."""
    if x.shape[0] == 0:
        raise ValueError("fisher_rao_norm needs at least one sample.")
    return fisher_rao_norm_per_sample(model, x).mean()


def _fisher_rao_norm_update(logits: Tensor) -> tuple[Tensor, Tensor]:
    """Batch statistics from the logits the forward pass already produced: (n int64, Σ_x terms float64)."""
    terms = _fisher_rao_terms(logits)
    return torch.tensor(terms.numel(), device=terms.device), terms.sum()


def _fisher_rao_norm_compute(count: Tensor, total: Tensor) -> Tensor:
    """Σ_j E_x[⟨∂L(f, j)/∂f, f⟩²]."""
    if int(count) == 0:
        raise ValueError("fisher_rao_norm has no samples: the split was empty.")
    return total / count
