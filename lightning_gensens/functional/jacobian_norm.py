"""Input–output Jacobian norm ‖∂f/∂x‖_F (Novak et al.; Daróczy 2022, eq. 9, estimator l⁴)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import vjp, vmap

from lightning_gensens.utilities import check_finite_parameters, evaluation_mode


def _jacobian_norms(model: nn.Module, x: Tensor) -> Tensor:
    """‖∂f(x)/∂x‖_F per sample: one forward and dout vector–Jacobian products (vmapped), Tensor[B].

    Exact when samples do not interact (eval mode): row o of every sample's Jacobian is ∂(Σ_b f_o(x_b))/∂x.
    """
    with torch.inference_mode(False), torch.no_grad():
        x = x.detach().clone()
        out, vjp_fn = vjp(lambda xx: model(xx).reshape(x.shape[0], -1), x)  # type: ignore[misc]  # stub: 3-tuple only with has_aux
        basis = torch.eye(out.shape[1], dtype=out.dtype, device=out.device)[:, None, :].expand(-1, *out.shape)
        (grads,) = vmap(vjp_fn)(basis)
        return grads.square().flatten(2).sum((0, 2)).sqrt()


def jacobian_norm(model: nn.Module, x: Tensor) -> Tensor:
    """‖∂f/∂x‖_F of the logits per sample (Daróczy 2022, eq. 9, averages it), Tensor[B], in eval mode."""
    check_finite_parameters(model)
    with evaluation_mode(model):
        return _jacobian_norms(model, x)


def _jacobian_norm_update(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """Batch statistics (n int64, Σ_x ‖∂f/∂x‖_F float64), sum-reducible. Expects eval mode."""
    norms = _jacobian_norms(model, x)
    return torch.tensor(norms.numel(), device=norms.device), norms.double().sum()


def _jacobian_norm_compute(count: Tensor, total: Tensor) -> Tensor:
    """E_x ‖∂f/∂x‖_F."""
    if int(count) == 0:
        raise ValueError("jacobian_norm has no samples: the split was empty.")
    return total.double() / count
