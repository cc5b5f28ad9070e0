"""Optimal-transport estimators against a brute-force LP (scipy ``linprog``), COTT's defining property and the
transport loss's bounds."""

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from lightning_gensens.functional import (
    class_prior,
    cot,
    cott,
    cott_threshold,
    label_shift_prior,
    transport_costs,
    transport_loss,
    transport_plan,
)


def _logits(seed: int, n: int, k: int = 4, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, k, generator=g, dtype=torch.float64)


def _lp_optimum(cost: np.ndarray, prior: np.ndarray) -> float:
    """min Σ Γ_ik C_ik over Γ ≥ 0 with row sums 1/N and column sums π, as a dense LP."""
    n, k = cost.shape
    rows = np.kron(np.eye(n), np.ones(k))
    cols = np.kron(np.ones(n), np.eye(k))
    result = linprog(
        cost.ravel(),
        A_eq=np.vstack([rows, cols]),
        b_eq=np.concatenate([np.full(n, 1 / n), prior]),
        bounds=(0, None),
        method="highs",
    )
    assert result.status == 0
    return float(result.fun)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_cot_and_transport_loss_equal_the_lp_optimum(seed, temperature):
    logits = _logits(seed, n=9)
    prior = torch.distributions.Dirichlet(torch.ones(4, dtype=torch.float64)).sample()
    log_p = torch.log_softmax(logits / temperature, dim=1).numpy()
    expected_error = _lp_optimum(1 - np.exp(log_p), prior.numpy())
    expected_loss = _lp_optimum(-log_p, prior.numpy())
    assert float(cot(logits, prior, temperature)) == pytest.approx(expected_error, rel=1e-9, abs=1e-12)
    assert float(transport_loss(logits, prior, temperature)) == pytest.approx(expected_loss, rel=1e-9, abs=1e-12)


def test_the_plan_has_the_marginals_and_the_costs_average_to_the_optimum():
    logits, prior = _logits(1, n=50, k=5), torch.tensor([0.1, 0.2, 0.3, 0.25, 0.15], dtype=torch.float64)
    cost = 1 - torch.softmax(logits, dim=1)
    plan = transport_plan(cost, prior)
    torch.testing.assert_close(plan.sum(1), torch.full((50,), 1 / 50, dtype=torch.float64))
    torch.testing.assert_close(plan.sum(0), prior)
    assert bool((plan >= 0).all())
    assert float(transport_costs(logits, prior).mean()) == pytest.approx(float((plan * cost).sum()), rel=1e-12)


def test_transport_loss_is_the_mean_nll_of_the_predicted_labels_when_pi_is_their_histogram():
    logits = _logits(2, n=40, k=3)
    predicted = logits.argmax(1)
    prior = class_prior(predicted, 3)
    nll = -torch.log_softmax(logits, 1).max(1).values.mean()
    assert float(transport_loss(logits, prior)) == pytest.approx(float(nll), rel=1e-10)
    assert float(cot(logits, prior)) == pytest.approx(float(1 - torch.softmax(logits, 1).max(1).values.mean()))


def test_transport_loss_never_exceeds_the_actual_loss_when_the_classes_follow_pi():
    logits = _logits(3, n=60, k=4)
    labels = torch.randint(0, 4, (60,), generator=torch.Generator().manual_seed(0))
    actual = torch.nn.functional.cross_entropy(logits, labels)
    w = transport_loss(logits, class_prior(labels, 4))
    assert 0 <= float(w) <= float(actual) + 1e-12


def test_transport_loss_is_not_clipped_for_confidently_wrong_predictions():
    logits = torch.tensor([[200.0, 0.0], [0.0, 200.0]], dtype=torch.float64)  # every prediction wrong under π
    assert float(transport_loss(logits, torch.tensor([0.0, 1.0], dtype=torch.float64))) == pytest.approx(100.0)
    assert float(cot(logits, torch.tensor([0.0, 1.0], dtype=torch.float64))) == pytest.approx(0.5)


@pytest.mark.parametrize("error", [0.0, 0.1, 0.37, 0.5, 0.93, 1.0])
def test_the_cott_threshold_leaves_the_reference_error_above_it(error):
    costs = torch.rand(200, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    t = cott_threshold(costs, error)
    assert float((costs > t).double().mean()) == pytest.approx(round(error * 200) / 200)


def test_cott_on_the_reference_itself_predicts_its_error():
    logits = _logits(5, n=300, k=4, scale=1.0)
    labels = torch.randint(0, 4, (300,), generator=torch.Generator().manual_seed(1))
    error = float((logits.argmax(1) != labels).double().mean())
    assert float(cott(logits, labels, error, logits)) == pytest.approx(round(error * 300) / 300)


def test_cott_is_the_share_of_costs_above_the_reference_threshold():
    ref, tgt = _logits(6, n=80), _logits(7, n=30, scale=1.0)
    labels = torch.randint(0, 4, (80,), generator=torch.Generator().manual_seed(2))
    prior = class_prior(labels, 4)
    t = cott_threshold(transport_costs(ref, prior, 1.5), 0.25)
    expected = (transport_costs(tgt, prior, 1.5) > t).double().mean()
    assert float(cott(ref, labels, 0.25, tgt, 1.5)) == float(expected)


def test_bad_inputs_are_refused():
    logits = _logits(11, n=5)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        class_prior(torch.tensor([0, 1, 4]), 4)
    with pytest.raises(ValueError, match="NaN or Inf"):
        cot(torch.full((2, 3), float("nan"), dtype=torch.float64), torch.ones(3) / 3)
    with pytest.raises(ValueError, match="prior must be"):
        transport_plan(torch.ones(2, 3, dtype=torch.float64), torch.zeros(3))
    with pytest.raises(ValueError, match="temperature must be positive"):
        transport_loss(logits, torch.ones(4) / 4, 0.0)


def test_label_shift_prior_recovers_the_class_distribution_of_a_shifted_split():
    g = torch.Generator().manual_seed(12)
    source, target = torch.tensor([0.2, 0.3, 0.5]), torch.tensor([0.6, 0.3, 0.1])
    means = torch.tensor([0.0, 2.0, 4.0])
    y = torch.multinomial(target, 20_000, replacement=True, generator=g)
    x = means[y] + torch.randn(20_000, generator=g)
    logits = (source.log() - (x[:, None] - means) ** 2 / 2).double()  # the Bayes posterior under the source prior
    estimate = label_shift_prior(logits, source.double())
    torch.testing.assert_close(estimate, target.double(), atol=0.02, rtol=0)
    assert float(estimate.sum()) == pytest.approx(1.0)


def test_label_shift_prior_keeps_a_prior_the_split_already_follows():
    logits = _logits(13, n=30, k=3)
    prior = torch.softmax(logits, 1).mean(0)  # the split's mean prediction: EM's fixed point
    torch.testing.assert_close(label_shift_prior(logits, prior), prior, atol=1e-9, rtol=0)
