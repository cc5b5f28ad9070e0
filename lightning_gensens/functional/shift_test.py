"""Which shift is this? Two-sample tests that tell a label shift from a covariate shift on an unlabelled target, and
the error and loss estimates they choose between (ours; the parts are published).

A label-free estimator reads the target through the network's outputs, and a covariate shift can give outputs that
look like a label shift of the reference (same class-conditional outputs, other class proportions) while the error
rises for other reasons. The inputs tell them apart: under a label shift the target is a reweighting of the
reference by class, in input space too. Three tests, each a p-value:

- ``p_shift``: target inputs against reference inputs (energy distance, Székely & Rizzo 2013, permutation test);
- ``p_classes``: the target's predicted-class histogram against the reference's (chi-square contingency test);
- ``p_twin``: target inputs against the *label-shift twin*, the reference resampled with class proportions q ≥ 0
  such that C q ≈ the target's mean softmax p̄ = softmax(z / T), C[j, y] = E[p_j | y] on the reference (non-negative
  least squares; the black-box shift estimate of Lipton et al., ICML 2018, with soft predictions: on a network still
  far from its final error the hard confusion matrix is nearly singular and q follows its noise).

The estimate then follows the first hypothesis the tests keep, each a difference from the labelled reference
(e_ref, l_ref: its error and loss; p = softmax(z / T), T fitted by NLL on the reference):

- no shift (p_shift ≥ α and p_classes ≥ α): DoC-TS and DoE-TS, e_ref + conf̄_ref − conf̄_tgt, l_ref + H̄_tgt − H̄_ref;
- label shift (p_twin ≥ α): the same differences against the twin, each reference sample weighted by
  w_i = q_{y_i} / π_{y_i}: e_ref + (ē_w − ē) + conf̄_w − conf̄_tgt, l_ref + (l̄_w − l̄) + H̄_tgt − H̄_w
  (ē, l̄: the reference sample's mean 0-1 error and cross-entropy at T = 1; ē_w, l̄_w, conf̄_w, H̄_w: weighted);
- covariate shift (otherwise): the transport costs (COT, Lu et al., NeurIPS 2023, and its loss counterpart with
  cost −log p, ours) of each split onto its own class distribution (the target onto q, the reference onto its
  class frequencies π), on the network's own outputs (T = 1), turned into an error by the mean of two calibrations
  on the reference: the difference, e_ref + W_err(tgt → q) − W_err(ref → π), and the ratio,
  e_ref · W_err(tgt → q) / W_err(ref → π); the loss likewise with W_loss and l_ref. For the error the target's
  logits are first rescaled to the reference's mean centred norm: a shift that only shrinks them (a contrast
  change) lowers every confidence but changes no argmax; the loss does change with their scale. Under a covariate
  shift an overconfident network's costs grow with its error, but slower, and it is confidently wrong on inputs far
  from its training data, where confidence sees nothing. So where the inputs of the output layer were captured,
  each reference and target sample is also placed in a 5 × 5 grid of the reference's quantiles of its distance to
  the k-th nearest training sample in that feature space and of its softmax confidence (the error's at the
  reference's logit norm), and the reference's mean 0-1 error and cross-entropy per cell are averaged over the
  target's samples (:func:`~lightning_gensens.functional.cell_means`): the error adds the excess of that average
  over the same average over the reference's own samples (not the reference error: the cells' means are shrunk
  toward it); the loss is the largest of the transport's, the cells' and the one the new error implies
  (l_ref + (e − e_ref) · (mean loss of a wrong reference sample − of a right one)). Transporting the target onto π
  instead charges a label shift the twin test rejects for the classes it lacks.

Errors are clipped to [0, 1] and losses at 0.
"""

from __future__ import annotations

import enum
from typing import Any, NamedTuple

import torch
from torch import Tensor

from lightning_gensens.functional.confidence import _check_logits, _check_scalar, _confidence_update
from lightning_gensens.functional.neighbours import cell_means
from lightning_gensens.functional.temperature import _check_labels, _scaled_logits
from lightning_gensens.functional.transport import _calibrated, class_prior, transport_costs

_SD_FLOOR = 1e-6
"""Reference standard deviations are floored at this fraction of the largest (a constant input stays testable)."""


class Shift(enum.IntEnum):
    """The hypothesis the tests keep (logged as its value)."""

    NONE = 0
    LABEL = 1
    COVARIATE = 2


class ShiftTests(NamedTuple):
    """The kept hypothesis, the three p-values (float64 scalars) and the target's label-shift proportions q [K]."""

    shift: Shift
    p_shift: Tensor
    p_classes: Tensor
    p_twin: Tensor
    proportions: Tensor


class ShiftEstimate(NamedTuple):
    """The tests and the predicted error and loss (float64 scalars)."""

    tests: ShiftTests
    error: Tensor
    loss: Tensor


def input_features(x: Tensor, dims: int = 128, seed: int = 0) -> Tensor:
    """Per-sample input features [B, d] for the two-sample tests: a sequence of vectors [B, L, D] (e.g. token
    embeddings) is averaged over its L positions, anything else flattened; more than ``dims`` features are hashed
    into ``dims`` by a seeded count sketch (each feature added with a random sign to a random bucket, which keeps
    inner products in expectation). float64."""
    if x.dim() < 2:
        raise ValueError(f"inputs must be batched, [B, ...], got shape {tuple(x.shape)}.")
    features = (x.mean(dim=1) if x.dim() == 3 else x.flatten(1)).to(torch.float64)
    width = features.shape[1]
    if width <= dims:
        return features
    generator = torch.Generator().manual_seed(seed)
    bucket = torch.randint(dims, (width,), generator=generator).to(features.device)
    sign = (torch.randint(2, (width,), generator=generator, dtype=torch.float64) * 2 - 1).to(features.device)
    return features.new_zeros(features.shape[0], dims).index_add_(1, bucket, features * sign)


def _energy(distances: Tensor, first: Tensor) -> Tensor:
    """Energy distance 2·E|X − Y| − E|X − X'| − E|Y − Y'| for each row of ``first`` [M, P] (a split of the points:
    1 = X, 0 = Y; the dtype of ``distances``) from the pairwise ``distances`` [P, P]: V-statistics as quadratic
    forms."""
    a = first
    b = 1 - a
    da = a @ distances
    db = distances.sum(0) - da  # b @ distances, without a second product
    na, nb = a.sum(1), b.sum(1)
    return 2 * (da * b).sum(1) / (na * nb) - (da * a).sum(1) / na**2 - (db * b).sum(1) / nb**2


def energy_test(a: Tensor, b: Tensor, permutations: int = 100, generator: torch.Generator | None = None) -> Tensor:
    """Permutation p-value of the energy distance between samples ``a`` [N, d] and ``b`` [M, d] (Székely & Rizzo
    2013): the share of random splits of a ∪ b into N and M points, the observed one counted, whose distance
    reaches the observed. Distances and quadratic forms in float32 (a test statistic, not a reported value)."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1] or not len(a) or not len(b):
        raise ValueError(f"a and b must be non-empty [N, d] and [M, d], got {tuple(a.shape)} and {tuple(b.shape)}.")
    if permutations < 1:
        raise ValueError(f"permutations must be positive, got {permutations}.")
    points = torch.cat([a, b]).to(torch.float32)
    n = len(points)
    chosen = torch.stack([torch.arange(n)] + [torch.randperm(n, generator=generator) for _ in range(permutations)])
    splits = torch.zeros(permutations + 1, n).scatter_(1, chosen[:, : len(a)], 1.0)  # row 0: the observed split
    energies = _energy(torch.cdist(points, points), splits.to(points.device))
    return ((energies[1:] >= energies[0]).sum() + 1).double() / (permutations + 1)


def predicted_class_test(reference: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """Chi-square p-value that two splits' predicted classes (``reference`` [N], ``target`` [M]) share one
    distribution (a 2 × K contingency table; classes neither predicts are left out; 1 when at most one is left)."""
    from scipy.stats import chi2_contingency

    table = torch.stack([torch.bincount(s.cpu(), minlength=num_classes) for s in (reference, target)])
    table = table[:, table.sum(0) > 0]
    if table.shape[1] < 2:
        return torch.ones((), dtype=torch.float64)
    return torch.tensor(float(chi2_contingency(table.numpy()).pvalue), dtype=torch.float64)


def confusion(predictions: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """C[j, y] = E[P(ŷ = j) | y] [K, K] (float64) from ``predictions``: predicted classes [N] (C[ŷ, y] = P(ŷ | y)) or
    probability rows [N, K] (the mean prediction per class); the column of a class without samples is 0."""
    if predictions.dim() == 1:
        predictions = torch.nn.functional.one_hot(predictions, num_classes)
    joint = torch.zeros(num_classes, num_classes, dtype=torch.float64, device=labels.device)
    joint.index_add_(1, labels, predictions.to(joint).T)
    counts = torch.bincount(labels, minlength=num_classes).to(joint)
    return joint / counts.clamp_min(1)


def label_shift_proportions(confusion: Tensor, predicted: Tensor) -> Tensor:
    """q ≥ 0 summing to 1 with ``confusion`` [K, K] · q ≈ ``predicted`` [K] (the target's mean prediction, in the
    form the confusion matrix was made from), by non-negative least squares (Lipton et al. 2018); uniform when nothing
    fits."""
    from scipy.optimize import nnls

    q, _ = nnls(confusion.double().cpu().numpy(), predicted.double().cpu().numpy())
    out = torch.from_numpy(q).to(predicted.device)
    return out / out.sum() if float(out.sum()) > 0 else torch.full_like(out, 1.0 / len(out))


def twin_indices(labels: Tensor, proportions: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
    """Indices of ``n`` reference samples drawn as a label shift to ``proportions`` [K]: each one's class from
    them, then a sample of that class uniformly (with replacement). Classes without samples get no draw."""
    counts = torch.bincount(labels, minlength=len(proportions)).cpu()
    q = proportions.detach().double().cpu() * (counts > 0)
    if float(q.sum()) <= 0:
        raise ValueError("no class of the proportions has a labelled reference sample.")
    classes = torch.multinomial(q / q.sum(), n, replacement=True, generator=generator)
    starts = torch.cumsum(counts, 0) - counts  # where each class begins among the samples sorted by class
    within = (torch.rand(n, generator=generator, dtype=torch.float64) * counts[classes]).long()
    return torch.argsort(labels.cpu(), stable=True)[starts[classes] + within].to(labels.device)


def _standardise(reference: Tensor, *others: Tensor) -> tuple[Tensor, ...]:
    """Every argument centred and scaled by the reference's per-feature mean and (floored) standard deviation."""
    mean = reference.mean(0)
    sd = reference.std(0) if len(reference) > 1 else torch.ones_like(mean)
    sd = sd.clamp_min(_SD_FLOOR * max(float(sd.max()), 1.0))
    return tuple((t - mean) / sd for t in (reference, *others))


def transport_means(logits: Tensor, prior: Tensor) -> tuple[Tensor, Tensor]:
    """(W_err, W_loss): the optimal transport costs of ``logits`` [N, K] (T = 1) onto the class distribution
    ``prior`` [K] with cost 1 − p (COT) and −log p (the transport loss)."""
    return transport_costs(logits, prior, kind="error").mean(), transport_costs(logits, prior, kind="loss").mean()


def _centred_norm(logits: Tensor) -> Tensor:
    """The mean L2 norm of the logits [N, K] centred per sample (softmax ignores a per-sample shift)."""
    return (logits - logits.mean(dim=1, keepdim=True)).norm(dim=1).mean()


def _rescaled(logits: Tensor, reference_logits: Tensor) -> Tensor:
    """``logits`` scaled to ``reference_logits``' mean centred norm (unchanged where their own is 0)."""
    norm = _centred_norm(logits)
    return logits * (_centred_norm(reference_logits) / norm) if float(norm) > 0 else logits


def _mean_or_all(values: Tensor, keep: Tensor) -> Tensor:
    """The mean of the kept ``values``, all of them where none is kept."""
    return values[keep].mean() if bool(keep.any()) else values.mean()


def _sample_losses(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample 0-1 error (bool) and cross-entropy (float64) of ``logits`` [N, K] at T = 1."""
    nll = -torch.log_softmax(logits.double(), dim=1).gather(1, labels[:, None]).squeeze(1)
    return logits.argmax(dim=1) != labels, nll


def _with_cells(
    estimates: tuple[Tensor, Tensor],
    reference: tuple[float | Tensor, float | Tensor],
    z_ref: Tensor,
    y: Tensor,
    z: Tensor,
    z_rescaled: Tensor,
    neighbours: tuple[Tensor, Tensor],
) -> tuple[Tensor, Tensor]:
    """The transport ``estimates`` (error, loss) with the reference's errors per cell of (distance, confidence) read
    at the target's samples: the error plus their excess over the same read at the reference's samples (the
    confidence of ``z_rescaled``, the target's logits at the reference's norm); the loss the largest of the
    transport's, the cells' (the confidence of ``z``) and the one the new error implies, the ``reference`` loss plus
    each extra error at the reference's mean loss of a wrong sample instead of a right one."""

    def cells(logits: Tensor, distances: Tensor) -> Tensor:
        confidence = _confidence_update(logits)[0]
        return torch.stack([distances.to(confidence), confidence], dim=1)

    cells_ref = cells(z_ref, neighbours[0])
    wrong, nll = _sample_losses(z_ref, y)
    rescaled = cells(z_rescaled, neighbours[1]).to(cells_ref.device)
    errors = wrong.double()
    excess = (cell_means(cells_ref, errors, rescaled) - cell_means(cells_ref, errors, cells_ref)).clamp_min(0.0)
    error = (estimates[0] + excess.to(estimates[0])).clamp(0.0, 1.0)
    cells_loss = cell_means(cells_ref, nll, cells(z, neighbours[1]).to(cells_ref.device)).to(estimates[1])
    gap = _mean_or_all(nll, wrong) - _mean_or_all(nll, ~wrong)
    implied = reference[1] + (error - reference[0]) * gap.to(error)
    return error, torch.maximum(torch.maximum(estimates[1], cells_loss), implied.to(estimates[1]))


def _halfway(reference_value: float, cost: Tensor, reference_cost: Tensor) -> Tensor:
    """The mean of the reference value shifted by the difference of the costs and scaled by their ratio."""
    return (reference_value + cost - reference_cost + _calibrated(reference_value, cost, reference_cost)) / 2


def _checked(
    reference_logits: Tensor, reference_labels: Tensor, reference_features: Tensor, logits: Tensor, features: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    z_ref, z = _check_logits(reference_logits), _check_logits(logits)
    y = _check_labels(reference_labels.to(z_ref.device), z_ref.shape[1], "reference_labels")
    if len(y) != len(z_ref) or len(reference_features) != len(z_ref) or len(features) != len(z):
        raise ValueError("each split's logits, labels and features must have one row per sample.")
    return z_ref, y, z


def shift_tests(
    reference_logits: Tensor,
    reference_labels: Tensor,
    reference_features: Tensor,
    logits: Tensor,
    features: Tensor,
    temperature: float | Tensor = 1.0,
    alpha: float = 0.05,
    test_samples: int = 512,
    permutations: int = 100,
    generator: torch.Generator | None = None,
) -> ShiftTests:
    """The three tests on at most ``test_samples`` samples per side (the first ones: pass samples in random order)
    and the hypothesis they keep at level ``alpha`` (see the module's docstring); the proportions q from the
    softmax at ``temperature`` (fitted on the reference). The reference is labelled (``reference_labels`` [N]); its
    logits [N, K] and features [N, d] align with them, as the target's."""
    z_ref, y, z = _checked(reference_logits, reference_labels, reference_features, logits, features)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}.")
    k = z_ref.shape[1]
    f_ref, f_tgt = _standardise(reference_features.double(), features.double().to(reference_features.device))
    n = min(test_samples, len(f_ref), len(f_tgt))
    p_shift = energy_test(f_tgt[:n], f_ref[:n], permutations, generator)
    pred_ref, pred = z_ref.argmax(1), z.argmax(1)
    p_classes = predicted_class_test(pred_ref, pred, k)
    p_ref, p = (torch.softmax(_scaled_logits(t, temperature), dim=1) for t in (z_ref, z))
    q = label_shift_proportions(confusion(p_ref, y, k), p.mean(0).to(y.device))
    p_twin = energy_test(f_tgt[:n], f_ref[twin_indices(y, q, n, generator)], permutations, generator)
    if float(p_shift) >= alpha and float(p_classes) >= alpha:
        shift = Shift.NONE
    else:
        shift = Shift.LABEL if float(p_twin) >= alpha else Shift.COVARIATE
    return ShiftTests(shift, p_shift, p_classes, p_twin, q)


def shift_estimate(
    reference_logits: Tensor,
    reference_labels: Tensor,
    reference_features: Tensor,
    reference_error: float | Tensor,
    reference_loss: float | Tensor,
    logits: Tensor,
    features: Tensor,
    temperature: float | Tensor = 1.0,
    tests: ShiftTests | None = None,
    reference_transport: tuple[Tensor, Tensor] | None = None,
    neighbours: tuple[Tensor, Tensor] | None = None,
    **kwargs: Any,
) -> ShiftEstimate:
    """The predicted error and loss of the hypothesis the tests keep (see the module's docstring): ``tests`` where
    given (from :func:`shift_tests` on the same samples), else :func:`shift_tests` with ``kwargs``;
    ``reference_transport``: the reference's :func:`transport_means` onto its class frequencies, where computed once
    for several targets; ``neighbours``: the reference's and the target's
    :func:`~lightning_gensens.functional.neighbour_distances` (the covariate estimate uses the transport alone
    without them)."""
    z_ref, y, z = _checked(reference_logits, reference_labels, reference_features, logits, features)
    error = _check_scalar(reference_error, "reference_error", unit_interval=True)
    loss = _check_scalar(reference_loss, "reference_loss")
    if tests is None:
        tests = shift_tests(z_ref, y, reference_features, z, features, temperature, **kwargs)
    prior, q = class_prior(y, z_ref.shape[1]), tests.proportions
    conf_ref, ent_ref = _confidence_update(_scaled_logits(z_ref, temperature))
    conf_tgt, ent_tgt = _confidence_update(_scaled_logits(z, temperature))
    if tests.shift is Shift.NONE:
        e, l_ = error + conf_ref.mean() - conf_tgt.mean(), loss + ent_tgt.mean() - ent_ref.mean()
    elif tests.shift is Shift.LABEL:
        w = (q.to(prior) / prior.clamp_min(torch.finfo(prior.dtype).tiny))[y]
        w = w / w.sum()
        wrong, nll = _sample_losses(z_ref, y)
        wrong = wrong.double()
        e = error + (w @ wrong - wrong.mean()) + w @ conf_ref - conf_tgt.mean()
        l_ = loss + (w @ nll - nll.mean()) + ent_tgt.mean() - w @ ent_ref
    else:  # the target onto its own estimated classes, the reference onto its known ones
        w_err_ref, w_loss_ref = reference_transport or transport_means(z_ref, prior)
        z_rescaled = _rescaled(z, z_ref.to(z.device))
        w_err = transport_means(z_rescaled, q.to(z.device))[0]
        w_loss = transport_means(z, q.to(z.device))[1]
        e, l_ = _halfway(error, w_err, w_err_ref), _halfway(loss, w_loss, w_loss_ref)
        if neighbours is not None:
            e, l_ = _with_cells((e, l_), (error, loss), z_ref, y, z, z_rescaled, neighbours)
    return ShiftEstimate(tests, e.clamp(0.0, 1.0), l_.clamp_min(0.0))
