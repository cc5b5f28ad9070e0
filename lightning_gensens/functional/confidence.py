"""Label-free performance estimation from logits alone: the baselines the generalization measures are compared with.

p = softmax(f), conf(x) = max_k p_k (maximum softmax probability, Hendrycks & Gimpel, ICLR 2017) and
H(x) = −Σ_k p_k log p_k (predictive entropy, from ``log_softmax``). A *reference* split is labelled (mean loss l_ref,
error e_ref); the *target* split is the one whose loss and error are predicted, and its labels are never used.

- AC, average confidence: error ≈ 1 − E_tgt conf; loss ≈ E_tgt H (the loss analogue).
- DoC, difference of confidences (Guillory et al., "Predicting with Confidence on Unseen Distributions", ICCV 2021):
  error ≈ e_ref + E_ref conf − E_tgt conf; loss ≈ l_ref + E_tgt H − E_ref H. Not clipped to [0, 1].
- ATC, average thresholded confidence (Garg et al., "Leveraging Unlabeled Data to Predict Out-of-Distribution
  Performance", ICLR 2022): fit t on the reference so that P_ref(s < t) = e_ref, predict error ≈ P_tgt(s < t), with
  s = max-softmax ("max_softmax") or negative entropy ("negative_entropy", the paper's ATC-NE). Its loss is the
  scale rule l_ref · error / e_ref (ours, not the paper's). See :func:`atc_threshold` for the tie and e_ref = 0 rules.
- The trivial baseline, target loss/error ≈ l_ref/e_ref, needs no function.

Everything is float64; ``_..._update``/``_..._compute`` are the pieces the Metric
:class:`~lightning_gensens.metrics.confidence.ConfidenceStatistics` reuses.
"""

from __future__ import annotations

import bisect
import math

import torch
from torch import Tensor

ATC_SCORES = ("max_softmax", "negative_entropy")


def _check_logits(logits: Tensor, name: str = "logits", allow_empty: bool = False) -> Tensor:
    """Shape checks (no host sync): [B, K] with K ≥ 2 (B ≥ 1 unless ``allow_empty``); detached float64 copy."""
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[1] < 2:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"{name} must have shape [B, K] with K >= 2 classes, got {shape}.")
    if logits.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} is empty: no samples.")
    return logits.detach().to(torch.float64)


def _check_finite(values: Tensor, name: str) -> None:
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"{name} contain NaN or Inf.")


def _check_scalar(value: float | Tensor, name: str, unit_interval: bool = False) -> float:
    number = float(value)
    if not math.isfinite(number) or (unit_interval and not 0.0 <= number <= 1.0):
        allowed = "in [0, 1]" if unit_interval else "finite"
        raise ValueError(f"{name} must be {allowed}, got {number}.")
    return number


def _check_score_kind(score: str) -> None:
    if score not in ATC_SCORES:
        raise ValueError(f"score must be one of {ATC_SCORES}, got {score!r}.")


def _confidence_update(logits: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample max-softmax confidence and predictive entropy, float64 [B] each (shape checks only, no sync)."""
    log_p = torch.log_softmax(_check_logits(logits, allow_empty=True), dim=1)
    p = log_p.exp()
    return p.amax(1), -(p * log_p).sum(1)


def _checked_statistics(logits: Tensor, name: str) -> tuple[Tensor, Tensor]:
    """:func:`_confidence_update` of a non-empty batch of finite logits."""
    _check_finite(_check_logits(logits, name), name)
    return _confidence_update(logits)


def _confidence_compute(count: Tensor, confidence_sum: Tensor, entropy_sum: Tensor) -> dict[str, Tensor]:
    """Sums over a split -> ``mean_confidence``, ``mean_entropy``, ``count``; refuses an empty or non-finite split."""
    if float(count) == 0:
        raise ValueError("confidence statistics have no samples: the split was empty.")
    _check_finite(torch.stack([confidence_sum, entropy_sum]), "logits")
    return {"mean_confidence": confidence_sum / count, "mean_entropy": entropy_sum / count, "count": count}


def softmax_confidence(logits: Tensor) -> Tensor:
    """conf(x) = max_k softmax(f(x))_k per sample (Hendrycks & Gimpel, ICLR 2017), Tensor[B] float64."""
    return _checked_statistics(logits, "logits")[0]


def predictive_entropy(logits: Tensor) -> Tensor:
    """H(x) = −Σ_k p_k log p_k per sample with p = softmax(f(x)), via ``log_softmax``, Tensor[B] float64."""
    return _checked_statistics(logits, "logits")[1]


def _average_confidence_compute(mean_confidence: Tensor, mean_entropy: Tensor) -> dict[str, Tensor]:
    """AC: ``loss`` = E H, ``error`` = 1 − E conf."""
    return {"loss": mean_entropy, "error": 1.0 - mean_confidence}


def average_confidence(logits: Tensor) -> dict[str, Tensor]:
    """AC on the target logits: predicted ``error`` = 1 − mean max-softmax, predicted ``loss`` = mean entropy."""
    confidence, entropy = _checked_statistics(logits, "logits")
    return _average_confidence_compute(confidence.mean(), entropy.mean())


def _difference_of_confidences_compute(
    ref_mean_confidence: Tensor,
    ref_mean_entropy: Tensor,
    target_mean_confidence: Tensor,
    target_mean_entropy: Tensor,
    ref_loss: float | Tensor,
    ref_error: float | Tensor,
) -> dict[str, Tensor]:
    """DoC from the two splits' means: error = e_ref + (conf̄_ref − conf̄_tgt), loss = l_ref + (H̄_tgt − H̄_ref)."""
    loss = _check_scalar(ref_loss, "ref_loss")
    error = _check_scalar(ref_error, "ref_error", unit_interval=True)
    return {
        "loss": loss + (target_mean_entropy - ref_mean_entropy),
        "error": error + (ref_mean_confidence - target_mean_confidence),
    }


def difference_of_confidences(
    ref_logits: Tensor, target_logits: Tensor, ref_loss: float | Tensor, ref_error: float | Tensor
) -> dict[str, Tensor]:
    """DoC (Guillory et al., ICCV 2021): the reference's loss and error shifted by the change in mean confidence.

    Predicted ``error`` = e_ref + E_ref conf − E_tgt conf; predicted ``loss`` = l_ref + E_tgt H − E_ref H
    (entropy as the loss analogue of confidence). Neither is clipped. Target == reference gives exactly
    (l_ref, e_ref).
    """
    ref_confidence, ref_entropy = _checked_statistics(ref_logits, "ref_logits")
    target_confidence, target_entropy = _checked_statistics(target_logits, "target_logits")
    return _difference_of_confidences_compute(
        ref_confidence.mean(), ref_entropy.mean(), target_confidence.mean(), target_entropy.mean(), ref_loss, ref_error
    )


def _atc_scores(confidence: Tensor, entropy: Tensor, score: str) -> Tensor:
    """The ATC score s(x): max-softmax confidence or negative entropy."""
    _check_score_kind(score)
    return confidence if score == "max_softmax" else -entropy


def _check_scores(scores: Tensor, name: str) -> Tensor:
    if not isinstance(scores, Tensor) or scores.dim() != 1:
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"{name} must have shape [N], got {shape}.")
    if scores.numel() == 0:
        raise ValueError(f"{name} is empty: no samples.")
    scores = scores.detach().to(torch.float64)
    _check_finite(scores, name)
    return scores


def atc_threshold(ref_scores: Tensor, ref_error: float | Tensor) -> Tensor | None:
    """ATC threshold t with P_ref(s < t) = e_ref (Garg et al., ICLR 2022), 0-dim float64, or ``None``.

    Rule: over the candidates t ∈ {distinct reference scores} ∪ {+inf}, pick the one whose count of reference
    scores strictly below it, #{s < t}, is closest to e_ref · n; on a tie between two counts, the smaller count.
    Without tied scores this makes #{s < t}/n equal e_ref within 1/(2n) (exactly e_ref when e_ref = m/n); tied
    scores are never split, so the fraction is the closest one they allow. t = +inf only when every reference
    sample is counted an error (e_ref · n > n − ½ without ties); then every target sample is predicted wrong.

    e_ref = 0 gives ``None``: the threshold degenerates (the official code then uses the minimum reference score)
    and the ATC loss scale rule is undefined, so the caller should skip ATC rather than get NaN.
    """
    scores = _check_scores(ref_scores, "ref_scores")
    error = _check_scalar(ref_error, "ref_error", unit_interval=True)
    if error == 0.0:
        return None
    ordered: list[float] = scores.sort().values.tolist()  # one host read; the rule is a few bisections of it
    n, target = len(ordered), error * scores.numel()
    # #{s < v} of a reference score v is the index of its first occurrence: the nearest counts either side of the
    # target are those of the scores at floor(target) and at ceil(target) (or of the next distinct score after it)
    below = n if target >= n else bisect.bisect_left(ordered, ordered[math.floor(target)])
    above = min(math.ceil(target), n)
    if above < n and bisect.bisect_left(ordered, ordered[above]) < above:  # inside a run of ties: after it
        above = bisect.bisect_right(ordered, ordered[above])
    count = below if target - below <= above - target else above  # on a tie, the smaller count
    return torch.tensor(ordered[count] if count < n else math.inf, dtype=torch.float64, device=scores.device)


def _average_thresholded_confidence_compute(
    ref_scores: Tensor, ref_error: float | Tensor, target_scores: Tensor, ref_loss: float | Tensor | None = None
) -> dict[str, Tensor] | None:
    """ATC from per-sample scores: ``error`` = P_tgt(s < t), ``loss`` = l_ref · error / e_ref; ``None`` if e_ref = 0."""
    target = _check_scores(target_scores, "target_scores")
    loss = None if ref_loss is None else _check_scalar(ref_loss, "ref_loss")
    threshold = atc_threshold(ref_scores, ref_error)
    if threshold is None:
        return None
    error = (target < threshold.to(target.device)).to(torch.float64).mean()
    out = {"error": error, "threshold": threshold}
    if loss is not None:
        out["loss"] = loss * error / float(ref_error)
    return out


def average_thresholded_confidence(
    ref_logits: Tensor,
    ref_error: float | Tensor,
    target_logits: Tensor,
    ref_loss: float | Tensor | None = None,
    score: str = "max_softmax",
) -> dict[str, Tensor] | None:
    """ATC (Garg et al., ICLR 2022): the fraction of target samples whose score falls below the reference threshold.

    ``score`` is ``"max_softmax"`` (ATC-MC) or ``"negative_entropy"`` (ATC-NE). Returns ``error`` (predicted target
    error), ``threshold`` (:func:`atc_threshold`) and, when ``ref_loss`` is given, ``loss`` = l_ref · error / e_ref.
    Returns ``None`` when ``ref_error`` is 0 (no threshold; skip ATC). Fit the threshold on held-out labelled data
    (validation), as the paper does, not on the training set.
    """
    _check_score_kind(score)
    ref_scores = _atc_scores(*_checked_statistics(ref_logits, "ref_logits"), score)
    target_scores = _atc_scores(*_checked_statistics(target_logits, "target_logits"), score)
    return _average_thresholded_confidence_compute(ref_scores, ref_error, target_scores, ref_loss)
