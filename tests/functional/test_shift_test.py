"""The shift test: energy test, predicted-class test, label-shift proportions and twins, and the estimate each
kept hypothesis gives, against brute force in float64."""

import pytest
import torch
import torch.nn.functional as F

from lightning_gensens.functional import (
    Shift,
    cell_means,
    class_prior,
    confusion,
    energy_test,
    fit_temperature,
    input_features,
    label_shift_proportions,
    predicted_class_test,
    shift_estimate,
    shift_tests,
    transport_costs,
    transport_means,
    twin_indices,
)
from lightning_gensens.functional.shift_test import _energy, _with_cells


def _brute_energy(x: torch.Tensor, y: torch.Tensor) -> float:
    """2·E|X − Y| − E|X − X'| − E|Y − Y'| from three distance matrices, by loops over the pairs."""

    def mean_distance(a: torch.Tensor, b: torch.Tensor) -> float:
        return sum(float((u - v).norm()) for u in a for v in b) / (len(a) * len(b))

    return 2 * mean_distance(x, y) - mean_distance(x, x) - mean_distance(y, y)


def test_energy_distance_matches_brute_force_for_every_split():
    g = torch.Generator().manual_seed(0)
    points = torch.randn(9, 3, generator=g, dtype=torch.float64)
    distances = torch.cdist(points, points)
    splits = torch.stack([torch.randperm(9, generator=g) < 4 for _ in range(5)]).double()
    got = _energy(distances, splits)
    for row, value in zip(splits.bool(), got, strict=True):
        assert float(value) == pytest.approx(_brute_energy(points[row], points[~row]), rel=1e-10)


def test_energy_test_separates_shifted_samples_and_is_calibrated_under_the_null():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(60, 4, generator=g), torch.randn(60, 4, generator=g) + 1.0
    assert float(energy_test(a, b, 99, g)) == pytest.approx(1 / 100)  # no permutation reaches a clear shift
    p = [float(energy_test(torch.randn(40, 2, generator=g), torch.randn(30, 2, generator=g), 49, g)) for _ in range(60)]
    assert all(1 / 50 <= v <= 1 for v in p)
    assert sum(v < 0.05 for v in p) <= 9  # a 5% test: about 3 of 60 (binomial 99.9% bound)
    with pytest.raises(ValueError, match="non-empty"):
        energy_test(torch.zeros(0, 2), b[:, :2])
    with pytest.raises(ValueError, match="permutations"):
        energy_test(a, b, 0)


def test_predicted_class_test_and_confusion_against_loops():
    ref, same, other = torch.tensor([0, 1, 2] * 30), torch.tensor([2, 1, 0] * 30), torch.tensor([0] * 80 + [1] * 10)
    assert float(predicted_class_test(ref, same, 3)) == pytest.approx(1.0)
    assert float(predicted_class_test(ref, other, 3)) < 1e-6
    assert float(predicted_class_test(torch.zeros(5, dtype=torch.long), torch.zeros(7, dtype=torch.long), 3)) == 1.0
    g = torch.Generator().manual_seed(2)
    pred, labels = torch.randint(4, (50,), generator=g), torch.randint(3, (50,), generator=g)
    c = confusion(pred, labels, 4)
    for y in range(4):
        for p in range(4):
            n = int((labels == y).sum())
            expected = int(((labels == y) & (pred == p)).sum()) / n if n else 0.0
            assert float(c[p, y]) == pytest.approx(expected)
    probs = torch.softmax(torch.randn(50, 4, generator=g, dtype=torch.float64), 1)
    soft = confusion(probs, labels, 4)
    for y in range(4):
        rows = probs[labels == y]
        expected = rows.mean(0) if len(rows) else torch.zeros(4, dtype=torch.float64)  # the mean prediction per class
        assert torch.allclose(soft[:, y], expected, atol=1e-12)
    assert torch.equal(confusion(F.one_hot(pred, 4).double(), labels, 4), c)  # one-hot rows: the hard matrix


def test_label_shift_proportions_recover_an_exact_label_shift():
    c = torch.tensor([[0.8, 0.1, 0.2], [0.1, 0.7, 0.1], [0.1, 0.2, 0.7]], dtype=torch.float64)
    q = torch.tensor([0.6, 0.1, 0.3], dtype=torch.float64)
    assert torch.allclose(label_shift_proportions(c, c @ q), q, atol=1e-12)
    assert torch.allclose(label_shift_proportions(torch.zeros(2, 2), torch.ones(2)), torch.full((2,), 0.5).double())


def test_the_tests_recover_an_exact_label_shift_of_the_reference_from_soft_predictions():
    x, y, z = _reference(n=300)
    counts = torch.tensor([3, 1, 2])  # each sample of class k repeated counts[k] times: q_k ∝ counts[k] · n_k
    keep = torch.repeat_interleave(torch.arange(len(y)), counts[y])
    q = torch.bincount(y[keep], minlength=3).double() / len(keep)
    t = fit_temperature(z, y)
    tests = shift_tests(z, y, x, z[keep], x[keep], t, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(tests.proportions, q, atol=1e-10)


def test_twin_indices_draw_classes_by_the_proportions():
    labels = torch.tensor([0] * 10 + [1] * 30 + [2] * 5)[torch.randperm(45, generator=torch.Generator().manual_seed(3))]
    q = torch.tensor([0.5, 0.0, 0.5], dtype=torch.float64)
    idx = twin_indices(labels, q, 4000, torch.Generator().manual_seed(4))
    drawn = labels[idx]
    assert not bool((drawn == 1).any())
    assert float((drawn == 0).double().mean()) == pytest.approx(0.5, abs=0.03)
    assert set(idx[drawn == 2].tolist()) == set(torch.nonzero(labels == 2).flatten().tolist())  # each sample used
    with pytest.raises(ValueError, match="no class"):
        twin_indices(labels, torch.tensor([0.0, 0.0, 0.0, 1.0]), 5)


def test_input_features_flatten_average_sequences_and_hash_wide_inputs():
    x = torch.randn(5, 2, 3, 4)
    assert torch.equal(input_features(x), x.flatten(1).double())
    seq = torch.randn(5, 7, 6)
    assert torch.allclose(input_features(seq), seq.mean(1).double())
    wide = torch.randn(400, 1000, dtype=torch.float64)
    hashed = input_features(wide, dims=64, seed=1)
    assert hashed.shape == (400, 64) and torch.equal(hashed, input_features(wide, dims=64, seed=1))
    ratio = hashed.square().sum(1) / wide.square().sum(1)  # a count sketch keeps squared norms in expectation
    assert float(ratio.mean()) == pytest.approx(1.0, abs=0.05)
    with pytest.raises(ValueError, match="batched"):
        input_features(torch.randn(3))


def _reference(n: int = 600, k: int = 3, seed: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs x [n, 2] around a class mean, labels, and logits of a noisy linear read-out (errors included)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(k, (n,), generator=g)
    means = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]], dtype=torch.float64)[:k]
    x = means[y] + torch.randn(n, 2, generator=g, dtype=torch.float64)
    logits = -torch.cdist(x, means).square()
    return x, y, logits


def _estimate(ref, target, **kwargs):
    x, y, z = ref
    xt, zt = target
    error = float((z.argmax(1) != y).double().mean())
    loss = float(F.cross_entropy(z, y))
    t = fit_temperature(z, y)
    return shift_estimate(z, y, x, error, loss, zt, xt, t, generator=torch.Generator().manual_seed(0), **kwargs), t


def test_no_shift_gives_doc_ts_and_doe_ts():
    ref = _reference()
    x, y, z = ref
    error, loss = float((z.argmax(1) != y).double().mean()), float(F.cross_entropy(z, y))
    out, t = _estimate(ref, (x.flip(0), z.flip(0)))  # the reference itself, in another order
    assert out.tests.shift is Shift.NONE and float(out.tests.p_shift) > 0.05 and float(out.tests.p_classes) > 0.05
    assert float(out.error) == pytest.approx(error, abs=1e-12) and float(out.loss) == pytest.approx(loss, abs=1e-12)
    xt, zt = _reference(seed=6)[0], _reference(seed=6)[2]
    out, t = _estimate(ref, (xt, zt))
    p, pt = torch.softmax(z / t, 1), torch.softmax(zt / t, 1)
    entropy = lambda q: float(-(q * q.log()).sum(1).mean())  # noqa: E731
    assert out.tests.shift is Shift.NONE
    assert float(out.error) == pytest.approx(error + float(p.max(1).values.mean() - pt.max(1).values.mean()))
    assert float(out.loss) == pytest.approx(loss + entropy(pt) - entropy(p))


def test_a_label_shift_is_kept_and_estimated_on_the_weighted_reference():
    ref = _reference(n=900)
    x, y, z = ref
    keep = torch.cat([torch.nonzero(y == 0).flatten(), torch.nonzero(y != 0).flatten()[:60]])  # mostly class 0
    out, t = _estimate(ref, (x[keep], z[keep]))
    assert out.tests.shift is Shift.LABEL and float(out.tests.p_classes) < 0.05 and float(out.tests.p_twin) >= 0.05
    # brute force: the weights q_y / π_y from the proportions the predictions give, each term by a loop
    pred = z.argmax(1)
    p_ref, p_keep = torch.softmax(z / t, 1), torch.softmax(z[keep] / t, 1)  # soft predictions at the fitted T
    q = label_shift_proportions(confusion(p_ref, y, 3), p_keep.mean(0))
    prior = class_prior(y, 3)
    w = torch.tensor([float(q[c] / prior[c]) for c in y.tolist()], dtype=torch.float64)
    w = w / w.sum()
    p = torch.softmax(z / t, 1)
    wrong = (pred != y).double()
    nll = F.cross_entropy(z, y, reduction="none")
    error = float(wrong.mean()) + float((w * wrong).sum() - wrong.mean()) + float((w * p.max(1).values).sum())
    error -= float(torch.softmax(z[keep] / t, 1).max(1).values.mean())
    entropy = -(p * p.log()).sum(1)
    pt = torch.softmax(z[keep] / t, 1)
    loss = float(nll.mean()) + float((w * nll).sum() - nll.mean()) + float(-(pt * pt.log()).sum(1).mean())
    loss -= float((w * entropy).sum())
    assert float(out.error) == pytest.approx(error, abs=1e-10) and float(out.loss) == pytest.approx(loss, abs=1e-10)
    actual = float((pred[keep] != y[keep]).double().mean())
    assert abs(float(out.error) - actual) < abs(float(wrong.mean()) - actual)  # closer than "pool = reference"


def _to_norm_of(logits: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``logits`` scaled so that their rows' mean centred norm is ``reference``'s, row by row."""

    def norm(rows: torch.Tensor) -> float:
        return sum(float((r - r.mean()).norm()) for r in rows) / len(rows)

    return logits * (norm(reference) / norm(logits))


def test_a_covariate_shift_is_estimated_halfway_between_the_difference_and_the_ratio_of_transport_costs():
    ref = _reference()
    x, y, z = ref
    g = torch.Generator().manual_seed(7)
    xt = x[:400] + 2.0 * torch.randn(400, 2, generator=g, dtype=torch.float64)  # noisier inputs, same classes
    means = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    zt = -torch.cdist(xt, means).square()
    out, _ = _estimate(ref, (xt, zt))
    assert out.tests.shift is Shift.COVARIATE and float(out.tests.p_twin) < 0.05
    prior = class_prior(y, 3)
    t = fit_temperature(z, y)
    q = label_shift_proportions(confusion(torch.softmax(z / t, 1), y, 3), torch.softmax(zt / t, 1).mean(0))
    error = float((z.argmax(1) != y).double().mean())
    loss = float(F.cross_entropy(z, y))
    w = {
        kind: [float(transport_costs(v, c, 1.0, kind).mean()) for v, c in ((target, q), (z, prior))]
        for kind, target in (("error", _to_norm_of(zt, z)), ("loss", zt))  # the error's logits at the reference norm
    }
    for value, reference, (cost, reference_cost) in ((out.error, error, w["error"]), (out.loss, loss, w["loss"])):
        halfway = (reference + cost - reference_cost + reference * cost / reference_cost) / 2
        assert float(value) == pytest.approx(min(halfway, 1) if value is out.error else halfway)


def test_a_reference_without_transport_cost_shifts_by_the_difference():
    ref = _reference()
    x, y, z = ref
    xt = x[:400] + 3.0
    zt = z[:400] * 0.5
    tests = shift_tests(z, y, x, zt, xt, generator=torch.Generator().manual_seed(0))
    zero = torch.zeros((), dtype=torch.float64)
    out = shift_estimate(
        z, y, x, 0.1, 0.3, zt, xt, tests=tests._replace(shift=Shift.COVARIATE), reference_transport=(zero, zero)
    )
    w_err, w_loss = transport_means(_to_norm_of(zt, z), tests.proportions)[0], transport_means(zt, tests.proportions)[1]
    assert float(out.error) == pytest.approx(min(0.1 + float(w_err), 1)) and float(out.loss) == pytest.approx(
        0.3 + float(w_loss)
    )


def test_a_reference_without_error_shifts_the_error_by_half_the_difference():
    x, y, z = _reference()
    xt, zt = x[:400] + 3.0, z[:400] * 0.5
    tests = shift_tests(z, y, x, zt, xt, generator=torch.Generator().manual_seed(0))._replace(shift=Shift.COVARIATE)
    out = shift_estimate(z, y, x, 0.0, 0.3, zt, xt, tests=tests)
    w_err, _ = transport_means(_to_norm_of(zt, z), tests.proportions)
    w_err_ref, _ = transport_means(z, class_prior(y, z.shape[1]))
    assert float(out.error) == pytest.approx(float((w_err - w_err_ref).clamp(0, 2) / 2)) and float(out.error) > 0


def test_logits_that_only_shrink_cost_what_the_reference_costs():
    x, y, z = _reference()
    tests = shift_tests(z, y, x, 0.3 * z, x + 3.0, generator=torch.Generator().manual_seed(0))
    tests = tests._replace(shift=Shift.COVARIATE, proportions=class_prior(y, z.shape[1]))
    out = shift_estimate(z, y, x, 0.2, 0.6, 0.3 * z, x + 3.0, tests=tests)
    assert float(out.error) == pytest.approx(0.2, abs=1e-9)  # the loss does change with the logits' scale


def test_the_covariate_estimate_adds_the_excess_error_of_the_cells_the_pool_falls_in_and_the_loss_it_implies():
    x, y, z = _reference()
    xt, zt = x[:300] + 1.5, z[:300] * 0.7
    tests = shift_tests(z, y, x, zt, xt, generator=torch.Generator().manual_seed(0))._replace(shift=Shift.COVARIATE)
    alone = shift_estimate(z, y, x, 0.2, 0.6, zt, xt, tests=tests)
    g = torch.Generator().manual_seed(4)
    wrong = (z.argmax(1) != y).double()
    nll = F.cross_entropy(z, y, reduction="none")
    ref_d = wrong + 0.5 * torch.rand(len(y), generator=g, dtype=torch.float64)  # the reference errs far away
    conf, conf_t, conf_n = (torch.softmax(v, 1).max(1).values for v in (z, zt, _to_norm_of(zt, z)))
    for target_d in (torch.full((300,), 1.4, dtype=torch.float64), torch.zeros(300, dtype=torch.float64)):
        out = shift_estimate(z, y, x, 0.2, 0.6, zt, xt, tests=tests, neighbours=(ref_d, target_d))
        cells_ref = torch.stack([ref_d, conf], 1)
        cells_error, cells_loss = torch.stack([target_d, conf_n], 1), torch.stack([target_d, conf_t], 1)
        excess = max(float(cell_means(cells_ref, wrong, cells_error) - cell_means(cells_ref, wrong, cells_ref)), 0.0)
        error = min(float(alone.error) + excess, 1.0)
        assert float(out.error) == pytest.approx(error)
        gap = float(nll[wrong > 0].mean()) - float(nll[wrong == 0].mean())  # a wrong sample's loss over a right one's
        implied = 0.6 + (error - 0.2) * gap
        assert float(out.loss) == pytest.approx(
            max(float(alone.loss), float(cell_means(cells_ref, nll, cells_loss)), implied)
        )
    far = shift_estimate(z, y, x, 0.2, 0.6, zt, xt, tests=tests, neighbours=(ref_d, torch.full((300,), 1.4)))
    near = shift_estimate(z, y, x, 0.2, 0.6, zt, xt, tests=tests, neighbours=(ref_d, torch.zeros(300)))
    assert float(far.error) > float(alone.error) == pytest.approx(float(near.error))  # far from the training data
    itself = tests._replace(proportions=class_prior(y, 3))  # the reference as its own target: no excess at all
    out = shift_estimate(z, y, x, 0.2, 0.6, z, x, tests=itself, neighbours=(ref_d, ref_d))
    assert float(out.error) == float(shift_estimate(z, y, x, 0.2, 0.6, z, x, tests=itself).error)


def test_a_high_error_estimate_implies_the_loss_of_its_extra_errors():
    x, y, z = _reference()
    g = torch.Generator().manual_seed(5)
    d = torch.rand(len(y), generator=g, dtype=torch.float64)
    wrong = z.argmax(1) != y
    nll = F.cross_entropy(z, y, reduction="none")
    near = (d, torch.zeros(200, dtype=torch.float64))  # the target in the nearest cells: no excess, a low cell loss
    z_target = z[:200]
    error, loss = _with_cells((torch.tensor(0.9), torch.tensor(0.1)), (0.2, 0.6), z, y, z_target, z_target, near)
    implied = 0.6 + (0.9 - 0.2) * float(nll[wrong].mean() - nll[~wrong].mean())
    assert float(error) == pytest.approx(0.9) and float(loss) == pytest.approx(implied)


def test_estimates_are_clipped_and_bad_arguments_refused():
    ref = _reference()
    x, y, z = ref
    out = shift_estimate(z, y, x, 1.0, 0.0, 5 * z[:200], x[:200] + 5, generator=torch.Generator().manual_seed(0))
    assert 0 <= float(out.error) <= 1 and float(out.loss) >= 0
    with pytest.raises(ValueError, match="alpha"):
        shift_estimate(z, y, x, 0.1, 0.1, z, x, alpha=1.0)
    with pytest.raises(ValueError, match="one row per sample"):
        shift_estimate(z, y, x[:10], 0.1, 0.1, z, x)
