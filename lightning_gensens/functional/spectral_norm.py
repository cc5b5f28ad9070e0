"""Spectral-norm product ∏‖W_i‖_σ (follow-up paper, l⁶)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse.linalg import LinearOperator, eigsh
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

from lightning_gensens.functional._weights import layer_weight
from lightning_gensens.utilities import check_finite_parameters, weight_layers

_ConvFn = Callable[..., Tensor]
_CONV_FN: dict[int, tuple[_ConvFn, _ConvFn]] = {
    1: (F.conv1d, F.conv_transpose1d),
    2: (F.conv2d, F.conv_transpose2d),
    3: (F.conv3d, F.conv_transpose3d),
}


def conv_operator_norm(conv: nn.Module, input_shape: tuple[int, ...], tol: float = 1e-10) -> Tensor:
    """Operator norm of a zero-padded convolution on inputs of ``input_shape`` (C, *spatial).

    λ_max(AᵀA) by ARPACK's Lanczos (``scipy.sparse.linalg.eigsh``) on the matrix-free AᵀA, with A the
    convolution and Aᵀ its transpose; not the norm of the reshaped kernel.
    """
    padding = conv.padding if isinstance(conv, _ConvNd) else None
    if not isinstance(conv, _ConvNd) or isinstance(padding, str) or conv.padding_mode != "zeros":
        raise ValueError(f"spectral_norm supports zero-padded convolutions with numeric padding, not {conv}.")
    fwd, adj = _CONV_FN[len(input_shape) - 1]
    w = conv.weight.detach().double()
    kw: dict[str, Any] = dict(stride=conv.stride, padding=padding, dilation=conv.dilation, groups=conv.groups)
    shape = (1, *input_shape)
    n = math.prod(input_shape)

    def gram(v: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64)).to(w.device).reshape(shape)
        back = _match_shape(adj(fwd(t, w, **kw), w, **kw), shape)
        return back.reshape(-1).cpu().numpy()

    op = LinearOperator((n, n), matvec=gram, dtype=np.float64)
    v0 = np.random.default_rng(0).standard_normal(n)
    top = eigsh(op, k=1, which="LA", tol=tol, v0=v0, return_eigenvectors=False)[0]
    return torch.tensor(math.sqrt(max(top, 0.0)), dtype=torch.float64, device=conv.weight.device)


def _match_shape(t: Tensor, shape: Sequence[int]) -> Tensor:
    """Crop or zero-pad the adjoint's output to the input shape (strided convolutions may drop a border)."""
    pads: list[int] = []
    for have, want in zip(reversed(t.shape[2:]), reversed(shape[2:]), strict=True):
        pads += [0, want - have]
    return F.pad(t, pads) if any(pads) else t


def layer_spectral_norms(model: nn.Module, input_shapes: dict[str, tuple[int, ...]] | None = None) -> Tensor:
    """‖W_i‖_σ per layer: exact for Linear, the operator norm by power iteration for Conv layers.

    ``input_shapes`` maps conv layer names to their per-sample input shape (C, *spatial); the operator norm of a
    convolution depends on it (see :func:`conv_input_shapes`).
    """
    norms = []
    for name, m in weight_layers(model):
        if isinstance(m, nn.Linear):
            norms.append(torch.linalg.matrix_norm(m.weight.detach(), ord=2))
        elif input_shapes is None or name not in input_shapes:
            raise ValueError(
                f"spectral_norm needs the input shape of conv layer '{name}': pass `example_input` (or "
                "`input_shapes`), since a convolution's operator norm depends on its input size."
            )
        else:
            norms.append(conv_operator_norm(m, input_shapes[name]).to(layer_weight(m).dtype))
    return torch.stack(norms)


@torch.no_grad()
def conv_input_shapes(model: nn.Module, example_input: Tensor) -> dict[str, tuple[int, ...]]:
    """Per-sample input shape of every conv layer, read by one forward pass of ``example_input[:1]``."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = [
        m.register_forward_pre_hook(lambda mod, args, n=name: shapes.__setitem__(n, tuple(args[0].shape[1:])))
        for name, m in weight_layers(model)
        if not isinstance(m, nn.Linear)
    ]
    training = {m: m.training for m in model.modules()}
    try:
        model.eval()
        model(example_input[:1])
    finally:
        for h in handles:
            h.remove()
        for m, mode in training.items():
            m.training = mode
    return shapes


def log_spectral_norm_product(
    model: nn.Module, example_input: Tensor | None = None, input_shapes: dict[str, tuple[int, ...]] | None = None
) -> Tensor:
    """log ∏‖W_i‖_σ in float64 (the product overflows for deep nets)."""
    check_finite_parameters(model)
    if input_shapes is None and example_input is not None:
        input_shapes = conv_input_shapes(model, example_input)
    return layer_spectral_norms(model, input_shapes).double().log().sum()


def spectral_norm_product(
    model: nn.Module, example_input: Tensor | None = None, input_shapes: dict[str, tuple[int, ...]] | None = None
) -> Tensor:
    """∏‖W_i‖_σ over the Linear/Conv layers (l⁶); conv layers need ``example_input`` or ``input_shapes``."""
    return log_spectral_norm_product(model, example_input, input_shapes).exp()
