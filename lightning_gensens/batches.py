"""Reading ``(x, y)`` from the batches users' loaders yield."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from lightning_utilities import apply_to_collection
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


def shard(batches: Iterable[Any], batch_to_xy: BatchToXY, rank: int, world_size: int) -> Iterator[Any]:
    """This rank's part of ``batches``: the samples ``rank::world_size`` of each batch (every tensor with as many
    rows as its inputs is indexed), so that a loader of fewer batches than ranks still gives every rank samples; a
    batch whose layout cannot be indexed goes whole to one rank in turn. A rank's empty part is skipped."""
    for i, batch in enumerate(batches):
        if world_size == 1:
            yield batch
            continue
        n = batch_to_xy(batch)[0].shape[0]
        x, y = batch_to_xy(_rows(batch, n, slice(0)))
        if x.shape[0] == 0 and (y is None or y.shape[0] == 0):  # the same answer on every rank
            if rank < n:
                yield _rows(batch, n, slice(rank, None, world_size))
        elif i % world_size == rank:
            yield batch


def _rows(batch: Any, n: int, index: slice) -> Any:
    """``batch`` with every tensor of ``n`` rows indexed by ``index``."""
    return apply_to_collection(batch, Tensor, lambda t: t[index] if t.dim() and t.shape[0] == n else t)
