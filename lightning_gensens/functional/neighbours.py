"""Nearest-neighbour distances in the network's own feature space, and the error they predict.

The score is the deep nearest-neighbour distance of Sun et al. (ICML 2022, "Out-of-Distribution Detection with Deep
Nearest Neighbors", eq. 2 with L2-normalised features): a sample's distance to its k-th nearest training sample in
the input of the output layer. Used as the score of ATC (Garg et al., ICLR 2022): the threshold t that puts the
labelled reference's error rate above it (:func:`~lightning_gensens.functional.cott_threshold`), and the target's
share above t as its predicted error. The features are normalised per sample, so a shift that only scales them
(a contrast change) moves no distance, where it moves every softmax confidence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_gensens.functional.confidence import _check_scalar
from lightning_gensens.functional.transport import cott_threshold

_CHUNK = 1024
"""Rows of ``features`` per distance block (a block is ``_CHUNK`` × memory distances)."""


def neighbour_distances(memory: Tensor, features: Tensor, k: int = 5, exclude_self: bool = False) -> Tensor:
    """Distance [N] of each row of ``features`` [N, D] to its k-th nearest row of ``memory`` [M, D], both normalised
    to unit L2 norm (a zero row stays zero); ``exclude_self``: ``features`` are ``memory``'s own rows, and each
    one's distance to itself is not counted (the (k+1)-th nearest is read). float64."""
    if memory.dim() != 2 or features.dim() != 2 or memory.shape[1] != features.shape[1]:
        raise ValueError(
            f"memory and features must be [M, D] and [N, D], got {tuple(memory.shape)}, {tuple(features.shape)}."
        )
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}.")
    rank = k + int(exclude_self)
    if rank > memory.shape[0]:
        raise ValueError(f"the {rank}-th nearest neighbour needs at least {rank} memory rows, got {memory.shape[0]}.")
    bank = F.normalize(memory.double(), dim=1)
    queries = F.normalize(features.double().to(bank.device), dim=1)
    blocks = [torch.cdist(q, bank).topk(rank, largest=False).values[:, -1] for q in queries.split(_CHUNK)]
    return torch.cat(blocks) if blocks else queries.new_zeros(0)


def neighbour_error(reference_distances: Tensor, reference_error: float | Tensor, distances: Tensor) -> Tensor:
    """The predicted error of a target: the share of its ``distances`` above the threshold that puts the share
    ``reference_error`` of the ``reference_distances`` above it (ties at the threshold count as not above)."""
    _check_scalar(reference_error, "reference_error", unit_interval=True)
    if distances.numel() == 0:
        raise ValueError("distances is empty.")
    t = cott_threshold(reference_distances, reference_error)
    return (distances.double() > t.to(distances.device)).double().mean()
