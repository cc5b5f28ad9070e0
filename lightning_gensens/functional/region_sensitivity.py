"""Empirical tangent sensitivity Ŝ(X) = Σ_{A∈A+} p_X(A)·T(A) over activation regions (Daróczy eq. 3, 4, 7).

T(A) is the tangent sample sensitivity of the region with activation pattern A (Lemma 3.3), from the closed form
of ReLU MLPs. ``hard``: empirical pattern frequencies, Ŝ = mean_x T(x). ``soft``: eq. 4 memberships
log p(A|x) = ⟨A, h(x)⟩ − Σ_l softplus(h_l(x)) over the observed patterns A+ (split ∪ reference, deduplicated),
normalised per x with temperature τ: p_X(A) = mean_x softmax_A(log p(A|x)/τ). The softplus term is the same
for every A, so it cancels in the softmax. As τ → 0 each x keeps only its own pattern and soft → hard.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightning_gensens.functional.active_node_bound import relu_preactivations
from lightning_gensens.functional.tangent_sensitivity import tangent_sensitivity_from_masks
from lightning_gensens.utilities import check_finite_parameters, evaluation_mode

_SAMPLE_CHUNK = 1024
_PATTERN_CHUNK = 4096


def _flat_preactivations(preactivations: Sequence[Tensor]) -> Tensor:
    """All hidden pre-activations of a batch side by side: [B, N]."""
    if not preactivations:
        raise ValueError("no ReLU pre-activations were captured: the network has no hidden nn.ReLU unit.")
    return torch.cat([h.flatten(1) for h in preactivations], dim=1)


def _region_sensitivity_update(
    model: nn.Module, preactivations: Sequence[Tensor], tangent: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Per-sample statistics from captured ReLU pre-activations (one [B, ...] per nn.ReLU, forward order).

    Returns ``pre`` [B, N] (the pre-activations side by side, model dtype) and ``tangent`` [B] = T(A(x)) in
    float64 (computed from the masks unless given). Hard mode sums ``tangent`` and counts samples; soft mode
    concatenates both. Expects eval mode.
    """
    if tangent is None:
        tangent = tangent_sensitivity_from_masks(model, [h > 0 for h in preactivations])
    return _flat_preactivations(preactivations), tangent.double()


def _region_sensitivity_compute(tangent_sum: Tensor, count: Tensor) -> Tensor:
    """Hard mode: Ŝ(X) = mean_x T(x) (eq. 3 with empirical pattern frequencies)."""
    if int(count) == 0:
        raise ValueError("region_sensitivity has no samples: the split was empty.")
    return tangent_sum.double() / count


def _region_patterns(patterns: Tensor, tangent: Tensor) -> tuple[Tensor, Tensor]:
    """Deduplicate activation patterns (bool [M, N]) with their T(A) [M]: (patterns [P, N], T(A) [P] float64).

    The framework keeps the training probe's deduplicated patterns this way to add them to A+ of another split.
    """
    unique, inverse = torch.unique(patterns.to(torch.uint8), dim=0, return_inverse=True)
    pattern_tangent = tangent.new_zeros(unique.shape[0], dtype=torch.float64).scatter_reduce(
        0, inverse, tangent.double(), reduce="mean", include_self=False
    )
    return unique.bool(), pattern_tangent


def _distinct_patterns(pre: Tensor) -> Tensor:
    """Number of distinct activation patterns among the rows of ``pre`` [M, N] (int64, 0-dim)."""
    return pre.new_tensor(torch.unique(pre > 0, dim=0).shape[0], dtype=torch.int64)


def _region_sensitivity_soft_compute(
    pre: Tensor,
    tangent: Tensor,
    reference_patterns: Tensor | None = None,
    reference_tangent: Tensor | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """Soft mode: Ŝ(X) = mean_x Σ_{A∈A+} softmax_A(⟨A, h(x)⟩/τ)·T(A) (eq. 4, 7), float64.

    ``pre`` [M, N] and ``tangent`` [M] of the split (from :func:`_region_sensitivity_update`); A+ = its patterns
    ∪ ``reference_patterns`` (bool [R, N], T(A) ``reference_tangent`` [R], e.g. the training probe's). Streams
    an online softmax over chunks of samples and patterns, so memory stays O(chunk² + (M + R)·N).
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}.")
    if pre.shape[0] == 0:
        raise ValueError("region_sensitivity has no samples: the split was empty.")
    patterns, pattern_tangent = pre > 0, tangent
    if reference_patterns is not None:
        if reference_tangent is None or reference_patterns.shape[1] != pre.shape[1]:
            raise ValueError("reference_patterns need their reference_tangent and the split's number of units.")
        patterns = torch.cat([patterns, reference_patterns.to(patterns.device, torch.bool)])
        pattern_tangent = torch.cat([tangent.double(), reference_tangent.to(tangent.device, torch.float64)])
    patterns, pattern_tangent = _region_patterns(patterns, pattern_tangent)
    total = pre.new_zeros((), dtype=torch.float64)
    for start in range(0, pre.shape[0], _SAMPLE_CHUNK):
        h = pre[start : start + _SAMPLE_CHUNK].double() / temperature
        # online softmax: running max, Σ exp(s − max) and Σ exp(s − max)·T(A), no large log values subtracted
        peak = h.new_full((h.shape[0],), -torch.inf)
        norm, weighted = h.new_zeros(h.shape[0]), h.new_zeros(h.shape[0])
        for p_start in range(0, patterns.shape[0], _PATTERN_CHUNK):
            scores = h @ patterns[p_start : p_start + _PATTERN_CHUNK].double().T
            new_peak = torch.maximum(peak, scores.amax(1))
            rescale = (peak - new_peak).exp()
            scores = (scores - new_peak[:, None]).exp()
            norm = norm * rescale + scores.sum(1)
            weighted = weighted * rescale + scores @ pattern_tangent[p_start : p_start + _PATTERN_CHUNK]
            peak = new_peak
        total += (weighted / norm).sum()
    return total / pre.shape[0]


def region_sensitivity(
    model: nn.Module, x: Tensor, mode: str = "hard", temperature: float = 1.0, reference: Tensor | None = None
) -> Tensor:
    """Ŝ(X) over the samples ``x`` (eq. 3, 7), 0-dim float64, evaluated in eval mode.

    ``mode="hard"``: mean_x T(x). ``mode="soft"``: eq. 4 memberships at temperature τ over the patterns of
    ``x`` and of ``reference`` (e.g. the training probe, as eq. 7 compares splits over one A+). ReLU MLPs only.
    """
    if mode not in ("hard", "soft"):
        raise ValueError(f"mode must be 'hard' or 'soft', got {mode!r}.")
    check_finite_parameters(model)
    if x.shape[0] == 0:
        raise ValueError("region_sensitivity needs at least one sample.")
    with evaluation_mode(model):
        pre, tangent = _region_sensitivity_update(model, relu_preactivations(model, x, "region_sensitivity"))
        if mode == "hard":
            return _region_sensitivity_compute(tangent.sum(), tangent.new_tensor(tangent.numel()))
        ref_patterns = ref_tangent = None
        if reference is not None:
            ref_pre, ref_tangent = _region_sensitivity_update(
                model, relu_preactivations(model, reference, "region_sensitivity")
            )
            ref_patterns = ref_pre > 0
    return _region_sensitivity_soft_compute(pre, tangent, ref_patterns, ref_tangent, temperature)


def count_activation_patterns(model: nn.Module, x: Tensor) -> Tensor:
    """Number of distinct activation patterns A(x) among the samples ``x`` (int64, 0-dim), in eval mode."""
    check_finite_parameters(model)
    with evaluation_mode(model):
        return _distinct_patterns(_flat_preactivations(relu_preactivations(model, x, "region_sensitivity")))
