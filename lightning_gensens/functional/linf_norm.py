"""Layer-wise l∞ norm bound of tangent sensitivity (Daróczy et al., Theorem 3.1, eq. 1)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lightning_gensens.functional._weights import layer_weight
from lightning_gensens.utilities import check_finite_parameters, weight_layers


def layer_linf_norms(model: nn.Module) -> Tensor:
    """w_i = max |W_i| of every Linear/Conv layer i = 1..k in forward order (biases excluded)."""
    return torch.stack([layer_weight(m).detach().abs().max() for _, m in weight_layers(model)])


def _layer_widths(model: nn.Module) -> list[int]:
    return [layer_weight(m).shape[0] for _, m in weight_layers(model)]


def _log_bound(model: nn.Module, input_dim: int, log_w: Tensor) -> Tensor:
    """log Sens¹ from the layers' log l∞ norms ``log_w`` (eq. 1)."""
    if input_dim < 1:
        raise ValueError(f"input_dim must be positive, got {input_dim}.")
    k = log_w.numel()
    n_theta = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return (
        math.log(n_theta)
        + math.log(input_dim)
        + 2 * (k - 1) * math.log(max(_layer_widths(model)))
        + 2 * (log_w.sum() - log_w.min())
    )


def log_linf_sensitivity_bound(model: nn.Module, input_dim: int) -> Tensor:
    """log Sens¹ = log(Nθ·din·N_max^{2(k−1)}·(∏w_i / min_i w_i)²), eq. 1, in float64.

    N_i is the width (output features or channels) of layer i and Nθ counts the trainable parameters.
    """
    check_finite_parameters(model)
    return _log_bound(model, input_dim, layer_linf_norms(model).double().log())


def linf_sensitivity_bound(model: nn.Module, input_dim: int) -> Tensor:
    """Sens¹ of Theorem 3.1 (eq. 1); overflows to inf for deep nets, where the log form stays finite."""
    return log_linf_sensitivity_bound(model, input_dim).exp()


def _linf_norm_update(model: nn.Module, input_dim: int) -> tuple[Tensor, Tensor]:
    """Statistics of one weight state: (log ∏w_i, log Sens¹), both float64, from one pass over the layers."""
    check_finite_parameters(model)
    log_w = layer_linf_norms(model).double().log()
    return log_w.sum(), _log_bound(model, input_dim, log_w)
