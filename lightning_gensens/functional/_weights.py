"""Typed access to a layer's weight (``nn.Module.__getattr__`` is typed ``Tensor | Module``)."""

from __future__ import annotations

from torch import Tensor, nn


def layer_weight(module: nn.Module) -> Tensor:
    """The ``weight`` tensor of a Linear/Conv layer (as found by :func:`~lightning_gensens.utilities.weight_layers`)."""
    weight = module.weight
    if not isinstance(weight, Tensor):
        raise TypeError(f"{type(module).__name__}.weight is a {type(weight).__name__}, not a tensor.")
    return weight
