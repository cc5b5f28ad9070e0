"""torchmetrics wrapper of relative flatness κ, κ_τ, ρ (Petzka et al., Table 1) over a split's samples."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchmetrics import Metric

from lightning_gensens.functional.input_gradient_norm import LossFn
from lightning_gensens.functional.relative_flatness import relative_flatness


def _all_reduce_sum(t: Tensor) -> Tensor:
    dist.all_reduce(t)
    return t


class RelativeFlatness(Metric):
    """Relative flatness of the mean loss over every sample it is updated with.

    The Hessian is not sum-reducible, so the metric keeps its rank's samples (up to ``max_samples``) and
    :meth:`compute` runs :func:`~lightning_gensens.functional.relative_flatness` on them with a distributed
    Hessian: each rank's Hessian-vector products over its shard are summed across ranks, so the result does not
    depend on the number of ranks (samples are never gathered; ``sync_on_compute`` is off).

    Args:
        layers: names of the Linear/Conv layers (default: all); ``loss_fn``: mean-reduced loss;
        max_samples: samples kept per rank; seed: seed of the random probes (the same on every rank);
        **options: ``lanczos_tol``, ``lanczos_max_iter``, ``trace_budget``, ``trace_rtol``, ``gauss_newton``.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(
        self,
        layers: Sequence[str] | None = None,
        loss_fn: LossFn | None = None,
        max_samples: int = 2048,
        seed: int = 0,
        options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("sync_on_compute", False)
        super().__init__(**kwargs)
        if max_samples < 1:
            raise ValueError(f"max_samples must be positive, got {max_samples}.")
        self.layers, self.loss_fn, self.max_samples, self.seed = layers, loss_fn, max_samples, seed
        self.options = dict(options or {})
        self._batches: list[tuple[Tensor, Tensor]] = []
        self._model: nn.Module | None = None

    def update(self, model: nn.Module, x: Tensor, y: Tensor) -> None:
        room = self.max_samples - sum(bx.shape[0] for bx, _ in self._batches)
        if room > 0:
            self._batches.append((x[:room].detach().clone(), y[:room].detach().clone()))
        self._model = model

    def compute(self) -> dict[str, Any]:
        if self._model is None:
            raise ValueError("relative_flatness has no samples: the split was empty.")
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        generator = torch.Generator().manual_seed(self.seed)
        return relative_flatness(
            self._model,
            self._batches,
            layers=self.layers,
            loss_fn=self.loss_fn,
            generator=generator,
            reduce=_all_reduce_sum if distributed else None,
            **self.options,
        )

    def reset(self) -> None:
        super().reset()
        self._batches, self._model = [], None
