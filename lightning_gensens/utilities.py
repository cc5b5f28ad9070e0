"""Helpers shared by the layers: layer discovery and input checks, keeping measuring invisible to training (RNG
state, module modes) and private generators. Torch, NumPy and the standard library only."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""Module types whose ``weight`` counts as a layer W_i of the measures (biases are never part of a norm)."""

NON_RELU_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.GELU,
    nn.Tanh,
    nn.Sigmoid,
    nn.SiLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ReLU6,
    nn.Softplus,
    nn.Mish,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Softsign,
    nn.Tanhshrink,
    nn.LogSigmoid,
    nn.Softmax,
    nn.LogSoftmax,
    nn.GLU,
    nn.Threshold,
    nn.MultiheadAttention,
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


def relu_network_problem(model: nn.Module, measure: str) -> str | None:
    """Why ``model`` is not a ReLU network whose hidden pre-activations can be hooked, or None if it is one."""
    for name, m in model.named_modules():
        if isinstance(m, NON_RELU_ACTIVATIONS):
            return (
                f"{measure} is defined for ReLU networks only, but module '{name or type(model).__name__}' is "
                f"{type(m).__name__}. Use a measure defined for any differentiable network instead "
                "(output_sensitivity, jacobian_norm, fisher_rao_norm, input_gradient_norm, relative_flatness)."
            )
    if not any(isinstance(m, nn.ReLU) for m in model.modules()) and len(weight_layers(model)) > 1:
        return (
            f"{measure} needs the hidden ReLU pre-activations of {type(model).__name__}, but it has no nn.ReLU "
            "module: a functional F.relu/torch.relu cannot be hooked. Use nn.ReLU modules."
        )
    return None


def relu_modules(model: nn.Module, measure: str) -> list[tuple[str, nn.ReLU]]:
    """Return the ``nn.ReLU`` modules of a ReLU network, or raise ``ValueError`` naming what makes it not one."""
    problem = relu_network_problem(model, measure)
    if problem is not None:
        raise ValueError(problem)
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ReLU)]


def finite_parameters(model: nn.Module) -> bool:
    """Whether every parameter is finite, with one host synchronisation: each parameter's smallest and largest entry
    (NaN and Inf reach them, and nothing overflows), one pass over it."""
    extremes: list[Tensor] = []
    for p in model.parameters():
        if p.numel():
            values = p.detach()
            extremes += torch.aminmax(torch.view_as_real(values) if values.is_complex() else values)
    if not extremes:
        return True
    device = extremes[0].device
    return bool(torch.isfinite(torch.stack([e.to(device) for e in extremes])).all())


def check_finite_parameters(model: nn.Module) -> None:
    """Raise ``ValueError`` naming the first parameter holding NaN or Inf."""
    if finite_parameters(model):
        return
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p).all()):
            raise ValueError(f"parameter '{name}' of {type(model).__name__} contains NaN or Inf values.")


def check_labels(y: Tensor | None, measure: str) -> Tensor:
    """Return ``y`` or raise the error of a label-needing measure given an unlabeled batch."""
    if y is None:
        raise ValueError(f"{measure} needs labels, but the batch carries none.")
    return y


def synchronized_time(device: torch.device | None) -> float:
    """The clock, after ``device``'s queued work (CUDA kernels run asynchronously)."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore the global torch (CPU and CUDA), NumPy and Python RNG states on exit."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        np.random.set_state(np_state)
        random.setstate(py_state)


@contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode and restore each one's own mode on exit (only where it changed: setting a
    module's attribute costs microseconds)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            if m.training != mode:
                m.training = mode


def rank_generator(seed: int, device: torch.device) -> torch.Generator:
    """A private generator on ``device`` seeded with ``seed`` plus an offset per DDP rank (independent noise)."""
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    return torch.Generator(device=device).manual_seed(seed + 7919 * rank)
