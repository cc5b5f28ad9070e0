"""Reading ``(x, y)`` from the batches users' loaders yield."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor

BatchToXY = Callable[[Any], tuple[Tensor, "Tensor | None"]]

X_KEYS = ("x", "input", "inputs", "input_ids", "pixel_values", "image", "images", "features")
Y_KEYS = ("y", "label", "labels", "target", "targets")


def default_batch_to_xy(batch: Any) -> tuple[Tensor, Tensor | None]:
    """Read ``(x, y)`` from a tensor (no labels), an ``(x,)`` or ``(x, y)`` tuple/list, or a mapping with common
    key names (Hugging Face's ``input_ids``, ``pixel_values``, ``labels``, ``label`` included).

    A tuple of three or more tensors is refused: which one is the label cannot be told from its position.
    """
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, Sequence) and not isinstance(batch, str) and batch and isinstance(batch[0], Tensor):
        if len(batch) == 1:
            return batch[0], None
        if len(batch) == 2 and (batch[1] is None or isinstance(batch[1], Tensor)):
            return batch[0], batch[1]
        raise TypeError(
            f"a batch of {len(batch)} elements is ambiguous: which one holds the labels cannot be told from its "
            "position. Pass `batch_to_xy=` returning (inputs, labels), e.g. `batch_to_xy=lambda b: (b[0], b[2])`."
        )
    if isinstance(batch, Mapping):
        x = next((batch[k] for k in X_KEYS if k in batch), None)
        y = next((batch[k] for k in Y_KEYS if k in batch), None)
        if isinstance(x, Tensor):
            return x, y if isinstance(y, Tensor) else None
    raise TypeError(
        f"cannot read inputs and labels from a batch of type {type(batch).__name__}: expected an (x, y) "
        f"tuple/list, a mapping with one of the keys {X_KEYS} (and optionally {Y_KEYS}), or a tensor. Pass "
        "`batch_to_xy=` to read this layout."
    )
