"""torchmetrics wrapper of relative flatness κ, κ_τ, ρ (Petzka et al., Table 1) over a split's samples."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchmetrics import Metric

from lightning_gensens.functional.input_gradient_norm import LossFn
from lightning_gensens.functional.relative_flatness import relative_flatness
from lightning_gensens.metrics._samples import keep_first, rows

NETWORK_STATS = ("kappa_sum", "kappa_max", "kappa_tau_sum", "kappa_tau_max", "rho_sum", "rho_max")
"""Network-wise entries of :meth:`RelativeFlatness.compute` (Table 1), over the layers measured."""

TRACE_METHODS = ("gauss-newton", "basis", "hutch++")
"""``"<layer>/trace_method"`` of :meth:`RelativeFlatness.compute` is an index into this tuple."""


class RelativeFlatness(Metric):
    """Relative flatness of the mean loss over every sample it is updated with.

    The Hessian is not sum-reducible, so the metric keeps its rank's samples (the first ``max_samples``) as list
    states and :meth:`compute` runs :func:`~lightning_gensens.functional.relative_flatness` on them with a
    distributed Hessian: each rank's Hessian-vector products over its shard are summed across the ranks of
    ``process_group`` (through ``dist_sync_fn`` when one is given), so the result does not depend on the number of
    ranks. Samples are never gathered: ``sync_on_compute`` defaults to False (when set True, every rank gathers all
    samples and computes on them alone).

    The model is not part of the metric: ``update(model, x, y)`` keeps only a weak reference to it (not a submodule,
    not in ``state_dict()``, not moved or cast by ``.to()``, dropped by pickling and copying), and :meth:`compute`
    uses the model of the last update, which must still be alive. The kept samples are not moved or cast by
    ``.to()``/``set_dtype`` either (labels stay integers).

    :meth:`compute` returns a flat ``dict[str, Tensor]``: the network-wise ``kappa_sum``, ``kappa_max``,
    ``kappa_tau_sum``, ``kappa_tau_max``, ``rho_sum``, ``rho_max``, and for every layer ``"<layer>/<stat>"`` for
    ``kappa``, ``kappa_tau``, ``lambda_max``, ``lambda_max_error``, ``trace``, ``trace_stderr``,
    ``weight_norm_sq``, ``rho`` (``Tensor[n_out]``), ``rho_max``, ``rho_sum``, ``lanczos_iters``, ``trace_hvps``
    (int64) and ``trace_method`` (int64 index into :data:`TRACE_METHODS`). Layer names are those of
    ``model.named_modules()`` (``""`` for a model that is itself a layer: keys ``"/kappa"``, ...).

    Args:
        layers: names of the Linear/Conv layers (default: all); ``loss_fn``: mean-reduced loss;
        max_samples: samples kept per rank; seed: seed of the random probes (the same on every rank);
        options: ``lanczos_tol``, ``lanczos_max_iter``, ``trace_budget``, ``trace_rtol``, ``gauss_newton``;
        kwargs: torchmetrics' ``Metric`` arguments (``process_group``, ``dist_sync_fn``, ...).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    inputs: list[Tensor]
    targets: list[Tensor]

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
        self.add_state("inputs", [], dist_reduce_fx="cat")
        self.add_state("targets", [], dist_reduce_fx="cat")
        self._model_ref: weakref.ref[nn.Module] | None = None

    def update(self, model: nn.Module, x: Tensor, y: Tensor) -> None:
        room = self.max_samples - rows(self.inputs)
        if room > 0:
            self.inputs.append(x[:room].detach().clone())
            self.targets.append(y[:room].detach().clone())
        self._model_ref = weakref.ref(model)

    def _reduce_states(self, incoming_state: dict[str, Any]) -> None:
        """Merge as torchmetrics does (``forward``, ``merge_state``), then keep only the first ``max_samples``."""
        super()._reduce_states(incoming_state)
        self.inputs = keep_first(self.inputs, self.max_samples)
        self.targets = keep_first(self.targets, self.max_samples)

    def _apply(self, fn: Callable[[Tensor], Tensor], exclude_state: Sequence[str] = ()) -> nn.Module:
        """``.to()``/``set_dtype`` leave the kept samples as they were given (labels stay integers): :meth:`compute`
        moves them to the model's device."""
        return super()._apply(fn, exclude_state=(*exclude_state, "inputs", "targets"))

    @property
    def model(self) -> nn.Module | None:
        """The model of the last update while it is alive (a weak reference), else None."""
        return self._model_ref() if self._model_ref is not None else None

    def _sum_over_ranks(self, t: Tensor) -> Tensor:
        """SUM of ``t`` over the ranks of ``process_group``, through ``dist_sync_fn`` (a gather) when given."""
        if self.dist_sync_fn is not None:
            return torch.stack(self.dist_sync_fn(t, group=self.process_group)).sum(0)
        dist.all_reduce(t, group=self.process_group)
        return t

    def _batches(self, model: nn.Module) -> list[tuple[Tensor, Tensor]]:
        """The kept (x, y) batches, on the model's device."""
        inputs = self.inputs if isinstance(self.inputs, list) else [self.inputs]  # a tensor once synced
        targets = self.targets if isinstance(self.targets, list) else [self.targets]
        device = next((p.device for p in model.parameters()), None)
        return [(x.to(device), y.to(device)) for x, y in zip(inputs, targets, strict=True)]

    def compute(self) -> dict[str, Tensor]:
        if rows(self.inputs) == 0:
            raise ValueError("relative_flatness has no samples: the split was empty.")
        model = self.model
        if model is None:
            raise ValueError(
                "RelativeFlatness has no live model: it keeps only a weak reference to the model of the last "
                "update(model, x, y), which was garbage-collected, or this metric was unpickled or copied. Call "
                "update(model, x, y) again with the model."
            )
        distributed = (
            not self._is_synced  # samples gathered by sync_on_compute=True: each rank holds all of them
            and self.distributed_available_fn()
            and dist.get_world_size(self.process_group) > 1
        )
        result = relative_flatness(
            model,
            self._batches(model),
            layers=self.layers,
            loss_fn=self.loss_fn,
            generator=torch.Generator().manual_seed(self.seed),
            reduce=self._sum_over_ranks if distributed else None,
            **self.options,
        )
        return _flatten(result)

    def reset(self) -> None:
        super().reset()
        self._model_ref = None

    def __getstate__(self) -> dict[str, Any]:
        """torchmetrics' pickling state without the model reference (weak references do not pickle)."""
        state = super().__getstate__()
        state["_model_ref"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._model_ref = None


def _flatten(result: dict[str, Any]) -> dict[str, Tensor]:
    """The nested result of :func:`relative_flatness` as ``{"kappa_sum": ..., "<layer>/<stat>": ...}`` tensors."""
    device = result["kappa_sum"].device
    flat = {name: result[name] for name in NETWORK_STATS}
    for layer, stats in result.items():
        if not isinstance(stats, dict):
            continue
        for stat, value in stats.items():
            if stat == "trace_method":
                value = TRACE_METHODS.index(value)
            flat[f"{layer}/{stat}"] = value if isinstance(value, Tensor) else torch.tensor(value, device=device)
    return flat
