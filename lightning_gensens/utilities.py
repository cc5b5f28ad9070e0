"""Helpers shared by the layers: layer discovery and input checks, reading batches, keeping measuring invisible
to training (RNG state, module modes), private generators and epoch-end progress."""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

BatchToXY = Callable[[Any], tuple[Tensor, Tensor | None]]

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


_X_KEYS = ("x", "input", "inputs", "image", "images", "features")
_Y_KEYS = ("y", "label", "labels", "target", "targets")


def default_batch_to_xy(batch: Any) -> tuple[Tensor, Tensor | None]:
    """Read ``(x, y)`` from a tuple/list, a dict with common key names, or a bare tensor (no labels)."""
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, Sequence) and not isinstance(batch, str) and 1 <= len(batch) <= 3:
        if isinstance(batch[0], Tensor) and (len(batch) == 1 or batch[1] is None or isinstance(batch[1], Tensor)):
            return batch[0], batch[1] if len(batch) > 1 else None
    if isinstance(batch, Mapping):
        x = next((batch[k] for k in _X_KEYS if k in batch), None)
        y = next((batch[k] for k in _Y_KEYS if k in batch), None)
        if isinstance(x, Tensor):
            return x, y
    raise TypeError(
        f"cannot read inputs and labels from a batch of type {type(batch).__name__}: expected an (x, y) "
        f"tuple/list, a dict with one of the keys {_X_KEYS} (and optionally {_Y_KEYS}), or a tensor. Pass "
        "`batch_to_xy=` to read this layout."
    )


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
    """Put every submodule in eval mode and restore each one's own mode on exit."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def rank_generator(seed: int, device: torch.device) -> torch.Generator:
    """A private generator on ``device`` seeded with ``seed`` plus an offset per DDP rank (independent noise)."""
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    return torch.Generator(device=device).manual_seed(seed + 7919 * rank)


class EpochEndProgress:
    """A task on the trainer's active progress bar for epoch-end measuring (global rank zero, bar enabled).

    Lightning has no sub-progress API: with the TQDM bar this opens a nested ``Tqdm`` below it, with the Rich bar a
    task on its ``progress``; otherwise every call is a no-op.
    """

    def __init__(self, trainer: Any, total: int, description: str = "gensens") -> None:
        from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
        from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

        self._tqdm: Any = None
        self._rich: Any = None
        bar = trainer.progress_bar_callback
        if not trainer.is_global_zero or bar is None or not bar.is_enabled:
            return
        if isinstance(bar, TQDMProgressBar):
            self._tqdm = Tqdm(
                total=total,
                desc=description,
                position=2 * bar.process_position + 2,
                leave=False,
                dynamic_ncols=True,
                file=sys.stdout,
            )
        elif isinstance(bar, RichProgressBar) and getattr(bar, "progress", None) is not None:
            self._rich = (bar.progress, bar.progress.add_task(description, total=total))

    def advance(self) -> None:
        if self._tqdm is not None:
            self._tqdm.update(1)
        elif self._rich is not None:
            self._rich[0].advance(self._rich[1])

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
        elif self._rich is not None:
            self._rich[0].remove_task(self._rich[1])
