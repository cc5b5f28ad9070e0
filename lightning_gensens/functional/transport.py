"""Optimal-transport estimates of a target split's error and loss from its logits alone (Lu et al.,
"Characterizing Out-of-Distribution Error via Optimal Transport", NeurIPS 2023).

The target's N softmax vectors p_i = softmax(z_i / T) (mass 1/N each) are transported onto the reference's class
distribution π (mass π_k on the one-hot vector e_k):

    W(C) = min_Γ Σ_ik Γ_ik C_ik   over Γ ≥ 0 with Σ_k Γ_ik = 1/N and Σ_i Γ_ik = π_k.

- COT (Lu et al. §3): C_ik = 1 − p_ik, half the L1 distance between e_k and p_i; predicted error = W(C).
- COTT (Lu et al. §3.3): per-sample costs c_i = N·Σ_k Γ_ik C_ik under the optimal coupling; a threshold t fitted on
  the reference (its own coupling to π) so that the share of reference samples with c > t equals the reference
  error; predicted error = share of target samples with c > t.
- Transport loss (ours): C_ik = −log p_ik from ``log_softmax`` (never clipped: confidently wrong predictions are
  where the loss is); predicted loss = W(C). When π is the histogram of the target's own predictions, the coupling
  that sends each sample to its argmax is optimal and W is the mean NLL of the predicted labels.

T is fitted by NLL on the labelled reference (:mod:`lightning_gensens.functional.temperature`). W is solved exactly
by the network simplex of POT (``ot.emd``) in float64 on the CPU; the problem is N×K and takes milliseconds for a
few thousand samples.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from lightning_gensens.functional.confidence import _check_logits, _check_scalar
from lightning_gensens.functional.temperature import _check_labels, _scaled_log_probs

_MAX_SIMPLEX_ITERATIONS = 10_000_000


def class_prior(labels: Tensor, num_classes: int) -> Tensor:
    """π, the class frequencies of ``labels`` [N] (float64 [K])."""
    labels = _check_labels(labels, num_classes)
    if labels.numel() == 0:
        raise ValueError("labels is empty: no class distribution.")
    counts = torch.bincount(labels, minlength=num_classes).to(torch.float64)
    return counts / counts.sum()


def transport_plan(cost: Tensor, prior: Tensor) -> Tensor:
    """The optimal coupling Γ [N, K] of N samples of mass 1/N with classes of mass ``prior`` [K] under ``cost``
    [N, K] (exact: POT's network simplex, float64)."""
    if cost.dim() != 2 or prior.dim() != 1 or cost.shape[1] != prior.shape[0]:
        raise ValueError(f"cost must be [N, K] and prior [K], got {tuple(cost.shape)} and {tuple(prior.shape)}.")
    b = prior.detach().to(torch.float64).cpu().numpy()
    if not (np.isfinite(b).all() and (b >= 0).all() and b.sum() > 0):
        raise ValueError("prior must be non-negative, finite and not all zero.")
    import ot  # POT: imported on first use, so this module loads without it (and without what it pulls in)

    n = cost.shape[0]
    a = np.full(n, 1.0 / n)
    plan = ot.emd(a, b / b.sum(), cost.detach().to(torch.float64).cpu().numpy(), numItermax=_MAX_SIMPLEX_ITERATIONS)
    return torch.from_numpy(np.asarray(plan)).to(cost.device)


def _costs(log_p: Tensor, kind: str) -> Tensor:
    return 1.0 - log_p.exp() if kind == "error" else -log_p


def transport_costs(logits: Tensor, prior: Tensor, temperature: float | Tensor = 1.0, kind: str = "error") -> Tensor:
    """Per-sample costs c_i = N·Σ_k Γ_ik C_ik [N] under the optimal coupling to ``prior``, with C = 1 − p
    (``kind="error"``, COT) or C = −log p (``kind="loss"``); their mean is the optimal cost W(C)."""
    if kind not in ("error", "loss"):
        raise ValueError(f"kind must be 'error' or 'loss', got {kind!r}.")
    cost = _costs(_scaled_log_probs(logits, temperature), kind)
    plan = transport_plan(cost, prior.to(cost.device))
    return cost.shape[0] * (plan * cost).sum(dim=1)


def cot(logits: Tensor, prior: Tensor, temperature: float | Tensor = 1.0) -> Tensor:
    """COT's predicted error of the split with ``logits`` [N, K]: the optimal transport cost of its softmax vectors
    onto the class distribution ``prior`` with cost 1 − p_ik (Lu et al. 2023, §3). In [0, 1]."""
    return transport_costs(logits, prior, temperature, "error").mean().clamp(0.0, 1.0)


def transport_loss(logits: Tensor, prior: Tensor, temperature: float | Tensor = 1.0) -> Tensor:
    """Predicted cross-entropy of the split with ``logits`` [N, K]: the optimal transport cost onto ``prior`` with
    cost −log p_ik (ours; the loss counterpart of COT). Non-negative."""
    return transport_costs(logits, prior, temperature, "loss").mean().clamp_min(0.0)


def _calibrated(reference_value: float | Tensor, cost: Tensor, reference_cost: Tensor) -> Tensor:
    """``reference_value`` · ``cost`` / ``reference_cost``; their difference added instead where the reference cost is
    at the exact solver's round-off (≤ 1e-6: a reference fitted without loss), which a ratio would blow up."""
    if float(reference_cost) > 1e-6:
        return reference_value * cost / reference_cost
    return reference_value + cost - reference_cost


def cott_threshold(reference_costs: Tensor, reference_error: float | Tensor) -> Tensor:
    """t such that the share of ``reference_costs`` above t is ``reference_error`` (the nearest share the N costs
    allow, round(e·N)/N; ties at t count as not above): the m = round(e·N)-th largest cost's lower neighbour."""
    error = _check_scalar(reference_error, "reference_error", unit_interval=True)
    costs = reference_costs.detach().to(torch.float64).flatten()
    if costs.numel() == 0:
        raise ValueError("reference_costs is empty.")
    ordered = costs.sort(descending=True).values
    m = round(error * costs.numel())
    if m >= costs.numel():
        return ordered[-1] - 1.0  # every reference sample above
    return ordered[m]


def cott(
    reference_logits: Tensor,
    reference_labels: Tensor,
    reference_error: float | Tensor,
    logits: Tensor,
    temperature: float | Tensor = 1.0,
) -> Tensor:
    """COTT's predicted error (Lu et al. 2023, §3.3): the share of samples whose COT cost exceeds the threshold that
    reproduces the reference error on the reference's own coupling to its class distribution."""
    num_classes = _check_logits(logits).shape[1]
    prior = class_prior(reference_labels, num_classes)
    t = cott_threshold(transport_costs(reference_logits, prior, temperature), reference_error)
    return (transport_costs(logits, prior, temperature) > t.to(logits.device)).double().mean()


def label_shift_prior(
    logits: Tensor, prior: Tensor, temperature: float | Tensor = 1.0, max_iterations: int = 200, tol: float = 1e-8
) -> Tensor:
    """The split's class distribution under label shift, by EM on its temperature-scaled softmax (Saerens et al.,
    Neural Computation 2002): reweight p_ik by π̂_k/π_k, renormalise, π̂ = the mean; from π̂ = ``prior``."""
    p = _scaled_log_probs(logits, temperature).exp()
    source = prior.detach().to(p)
    estimate = source.clone()
    for _ in range(max_iterations):
        weights = torch.where(source > 0, estimate / source, torch.zeros_like(source))
        adjusted = p * weights
        new = (adjusted / adjusted.sum(dim=1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)).mean(dim=0)
        done = bool((new - estimate).abs().max() < tol)
        estimate = new
        if done:
            break
    return estimate
