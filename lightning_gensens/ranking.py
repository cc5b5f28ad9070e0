"""Ranking architectures before training by output sensitivity at initialisation (Forouzesh §5.4)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lightning_gensens.batches import default_batch_to_xy
from lightning_gensens.functional.output_sensitivity import (
    _chan_merge,
    _output_sensitivity_compute,
    _output_sensitivity_update,
)
from lightning_gensens.utilities import evaluation_mode


@dataclass
class RankedModel:
    """One candidate: its name, the model, and its output sensitivity S before training."""

    name: str
    model: nn.Module
    sensitivity: float


def rank_architectures(
    models: Mapping[str, nn.Module] | Sequence[nn.Module],
    data: Tensor | Iterable[Any],
    sigma: float = 0.1,
    n_draws: int = 1,
    seed: int = 0,
) -> list[RankedModel]:
    """Order untrained candidates by S_before (eq. 2), lowest first: the paper's predicted best generalizer.

    ``data`` is a tensor of inputs or an iterable of batches (labels, if any, are ignored). Every model sees the
    same inputs and the same noise (a private generator seeded with ``seed``), in eval mode, restored after.
    """
    named = dict(models) if isinstance(models, Mapping) else {f"model_{i}": m for i, m in enumerate(models)}
    if not named:
        raise ValueError("rank_architectures needs at least one model.")
    batches = [data] if isinstance(data, Tensor) else [default_batch_to_xy(b)[0] for b in data]
    if not batches or sum(b.shape[0] for b in batches) == 0:
        raise ValueError("rank_architectures needs at least one input sample.")
    ranked = []
    for name, model in named.items():
        device = next(model.parameters()).device
        generator = torch.Generator(device=device).manual_seed(seed)
        moments = torch.zeros(3, dtype=torch.float64)
        with evaluation_mode(model):
            for x in batches:
                batch_moments, _ = _output_sensitivity_update(model, x.to(device), None, sigma, n_draws, generator)
                moments = _chan_merge(torch.stack([moments, batch_moments.cpu()]))
        ranked.append(RankedModel(name, model, float(_output_sensitivity_compute(moments))))
    return sorted(ranked, key=lambda r: r.sensitivity)
