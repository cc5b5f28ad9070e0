"""Sums over samples as sum-reducible states: the base of the metrics that average a quantity over samples (or
updates), and the count of samples fed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torchmetrics import Metric

if TYPE_CHECKING:  # matplotlib is imported by torchmetrics' plot utilities, only when plotting
    from torchmetrics.utilities.plot import _AX_TYPE, _PLOT_OUT_TYPE


class SampleMean(Metric):
    """E_x of a per-sample quantity; subclasses call :meth:`_accumulate` with a batch's (count, total)."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    count: Tensor
    total: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def _accumulate(self, count: Tensor, total: Tensor) -> None:
        self.count += count.to(self.count)
        self.total += total.to(self.total)

    def _mean(self) -> Tensor:
        """total / count, refusing an empty state rather than returning NaN."""
        if float(self.count) == 0:
            raise ValueError(f"{type(self).__name__} was computed before any update: the split was empty.")
        return self.total / self.count

    def plot(self, val: Tensor | Sequence[Tensor] | None = None, ax: _AX_TYPE | None = None) -> _PLOT_OUT_TYPE:
        """Plot one value or a sequence of values of the metric (:meth:`compute` when ``val`` is None).

        Needs matplotlib; returns the figure and axes (``ax`` is drawn into when given).
        """
        return self._plot(val, ax)


class SampleCount(Metric):
    """The number of samples fed (float64, summed across batches and DDP ranks): one in-place addition per batch."""

    is_differentiable = False
    higher_is_better: bool | None = None
    full_state_update = False

    count: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, n: int) -> None:
        self.count.add_(n)  # in place: assigning a Metric's attribute goes through ``nn.Module.__setattr__``

    def compute(self) -> Tensor:
        return self.count
