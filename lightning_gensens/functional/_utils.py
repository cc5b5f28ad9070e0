"""Shared helpers of the functional layer: layer discovery and input validation."""

from __future__ import annotations

import torch
from torch import Tensor, nn

WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""Module types whose ``weight`` counts as a layer W_i of the measures (biases are never part of a norm)."""

NON_RELU_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.GELU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.ELU, nn.SELU, nn.CELU, nn.LeakyReLU, nn.PReLU, nn.RReLU,
    nn.ReLU6, nn.Softplus, nn.Mish, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softsign, nn.Tanhshrink,
    nn.LogSigmoid, nn.Softmax, nn.LogSoftmax, nn.GLU, nn.Threshold, nn.MultiheadAttention,
)


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Return ``(name, module)`` of every Linear/Conv layer in registration order (assumed forward order)."""
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)]
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear or nn.Conv1d/2d/3d layer: the sensitivity measures are "
            "defined on the weights of such layers."
        )
    return layers


def relu_modules(model: nn.Module, measure: str) -> list[tuple[str, nn.ReLU]]:
    """Return the ``nn.ReLU`` modules of a ReLU network, or raise naming what makes it not one.

    Measures whose math holds for piecewise-linear ReLU networks only call this first.
    """
    for name, m in model.named_modules():
        if isinstance(m, NON_RELU_ACTIVATIONS):
            raise ValueError(
                f"{measure} is defined for ReLU networks only, but module '{name or type(model).__name__}' is "
                f"{type(m).__name__}. Use a measure defined for any differentiable network instead "
                "(output_sensitivity, jacobian_norm, fisher_rao_norm, input_gradient_norm, relative_flatness)."
            )
    relus = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ReLU)]
    if not relus and len(weight_layers(model)) > 1:
        raise ValueError(
            f"{measure} needs the hidden ReLU pre-activations of {type(model).__name__}, but it has no nn.ReLU "
            "module: a functional F.relu/torch.relu cannot be hooked. Use nn.ReLU modules."
        )
    return relus


def check_finite_parameters(model: nn.Module) -> None:
    """Raise ``ValueError`` naming the first parameter holding NaN or Inf."""
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p).all()):
            raise ValueError(f"parameter '{name}' of {type(model).__name__} contains NaN or Inf values.")


def check_labels(y: Tensor | None, measure: str) -> Tensor:
    """Return ``y`` or raise the error of a label-needing measure given an unlabeled batch."""
    if y is None:
        raise ValueError(f"{measure} needs labels, but the batch carries none.")
    return y
