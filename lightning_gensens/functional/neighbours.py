"""Nearest-neighbour distances in the network's own feature space, and the reference's errors per cell of scores.

The distance is the deep nearest-neighbour distance of Sun et al. (ICML 2022, "Out-of-Distribution Detection with
Deep Nearest Neighbors", eq. 2 with L2-normalised features): a sample's distance to its k-th nearest training sample
in the input of the output layer. The features are normalised per sample, so a shift that only scales them (a
contrast change) moves no distance.

:func:`cell_means` turns per-sample scores (such a distance, the softmax confidence) into a prediction for an
unlabelled target: the labelled reference's mean error (or loss) in each cell of a grid of the scores' reference
quantiles, shrunk toward the reference's overall mean, averaged over the cells the target's samples fall in. It is
importance weighting of the reference by the ratio of the two splits' histograms on that grid: exact where the
error depends on the inputs through the scores alone, and it can predict no more than the worst cell's rate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_CHUNK = 1024
"""Rows of ``features`` per distance block (a block is ``_CHUNK`` × memory distances)."""


def neighbour_distances(memory: Tensor, features: Tensor, k: int = 5, exclude_self: bool = False) -> Tensor:
    """Distance [N] of each row of ``features`` [N, D] to its k-th nearest row of ``memory`` [M, D], both normalised
    to unit L2 norm (a zero row stays zero); ``exclude_self``: ``features`` are ``memory``'s own rows, and each
    one's distance to itself is not counted (the (k+1)-th nearest is read). Computed in the inputs' precision, at
    least float32 (float32 features: about 2.4x faster than float64 at 2,048 × 2,048 × 2,048); returned as
    float64."""
    if memory.dim() != 2 or features.dim() != 2 or memory.shape[1] != features.shape[1]:
        raise ValueError(
            f"memory and features must be [M, D] and [N, D], got {tuple(memory.shape)}, {tuple(features.shape)}."
        )
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}.")
    rank = k + int(exclude_self)
    if rank > memory.shape[0]:
        raise ValueError(f"the {rank}-th nearest neighbour needs at least {rank} memory rows, got {memory.shape[0]}.")
    dtype = torch.promote_types(torch.promote_types(memory.dtype, features.dtype), torch.float32)
    bank = F.normalize(memory.to(dtype), dim=1)
    queries = F.normalize(features.to(device=bank.device, dtype=dtype), dim=1)
    blocks = [torch.cdist(q, bank).topk(rank, largest=False).values[:, -1] for q in queries.split(_CHUNK)]
    return (torch.cat(blocks) if blocks else queries.new_zeros(0)).double()


def cell_means(
    reference_scores: Tensor, reference_values: Tensor, scores: Tensor, bins: int = 5, prior: float = 5.0
) -> Tensor:
    """The mean over the target's samples of their cells' reference means: each score (column of
    ``reference_scores`` [N, S] and ``scores`` [M, S]) is cut at its ``bins``-quantiles on the reference, a cell is
    one interval per score, and a cell's mean is (Σ ``reference_values`` in it + ``prior`` · their overall mean) /
    (its reference samples + ``prior``) (a cell without reference samples gets the overall mean). float64."""
    if reference_scores.dim() != 2 or scores.dim() != 2 or reference_scores.shape[1] != scores.shape[1]:
        raise ValueError(
            f"scores must be [N, S] and [M, S], got {tuple(reference_scores.shape)} and {tuple(scores.shape)}."
        )
    if reference_values.shape != (reference_scores.shape[0],) or not len(reference_values) or not len(scores):
        raise ValueError("the reference needs one value per scored sample, and neither split may be empty.")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1 or prior < 0:
        raise ValueError(f"bins must be a positive int and prior non-negative, got {bins!r} and {prior!r}.")
    ref, target = reference_scores.double(), scores.double().to(reference_scores.device)
    values = reference_values.double().to(ref.device)
    levels = torch.arange(1, bins, dtype=torch.float64, device=ref.device) / bins
    cell_ref = torch.zeros(len(ref), dtype=torch.long, device=ref.device)
    cell_target = torch.zeros(len(target), dtype=torch.long, device=ref.device)
    for column, target_column in zip(ref.T.contiguous(), target.T.contiguous(), strict=True):
        edges = torch.quantile(column, levels)
        cell_ref = cell_ref * bins + torch.bucketize(column, edges)
        cell_target = cell_target * bins + torch.bucketize(target_column, edges)
    cells = bins ** ref.shape[1]
    mean = values.mean()
    sums = torch.zeros(cells, dtype=torch.float64, device=ref.device).index_add_(0, cell_ref, values)
    counts = torch.bincount(cell_ref, minlength=cells).double()
    rates = torch.where(counts + prior > 0, (sums + prior * mean) / (counts + prior), mean)
    return rates[cell_target].mean()
