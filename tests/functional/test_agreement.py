"""ALine-D against a direct implementation (numpy loops over pairs, ``np.polyfit``, ``np.linalg.lstsq``, scipy's
probit), its recovery of the true accuracies from agreements exactly on a probit line, the ≥ 3 rule and the
clipping."""

import itertools

import numpy as np
import pytest
import torch
from scipy.special import ndtr, ndtri

from lightning_gensens.functional import agreement_rates, aline_d


def _direct(agr_ref: np.ndarray, agr_tgt: np.ndarray, acc: np.ndarray, eps: float) -> np.ndarray:
    """Baek et al. (2022), §5.3, written out pair by pair."""
    c = len(acc)
    probit = lambda r: ndtri(np.clip(r, eps, 1 - eps))  # noqa: E731
    pairs = list(itertools.combinations(range(c), 2))
    u = np.array([probit(agr_ref[i, j]) for i, j in pairs])
    v = np.array([probit(agr_tgt[i, j]) for i, j in pairs])
    slope, _ = np.polyfit(u, v, 1)
    rows, rhs = [], []
    for (i, j), ui, vi in zip(pairs, u, v, strict=True):
        row = np.zeros(c)
        row[i] = row[j] = 0.5
        rows.append(row)
        rhs.append(vi + slope * ((probit(acc[i]) + probit(acc[j])) / 2 - ui))
    x, *_ = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)
    return ndtr(x)


def _symmetric(c: int, values: np.ndarray) -> np.ndarray:
    matrix = np.ones((c, c))
    for (i, j), v in zip(itertools.combinations(range(c), 2), values, strict=True):
        matrix[i, j] = matrix[j, i] = v
    return matrix


def _on_the_line(c: int, slope: float, intercept: float, seed: int) -> tuple[np.ndarray, ...]:
    """Reference accuracies and agreements, target agreements Φ(a·Φ⁻¹(agr_ref) + b) and the true target accuracies
    Φ(a·Φ⁻¹(acc_ref) + b): the same probit line for both (the paper's premise)."""
    rng = np.random.default_rng(seed)
    acc = rng.uniform(0.6, 0.95, c)
    agr_ref = _symmetric(c, rng.uniform(0.7, 0.97, c * (c - 1) // 2))
    agr_tgt = ndtr(slope * ndtri(agr_ref) + intercept)
    np.fill_diagonal(agr_tgt, 1.0)
    return agr_ref, agr_tgt, acc, ndtr(slope * ndtri(acc) + intercept)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a)


@pytest.mark.parametrize("c", [3, 4, 7])
def test_agreements_on_a_probit_line_recover_the_true_accuracies(c):
    agr_ref, agr_tgt, acc, truth = _on_the_line(c, slope=0.8, intercept=-0.4, seed=c)
    predicted = aline_d(_t(agr_ref), _t(agr_tgt), _t(acc))
    assert predicted.dtype == torch.float64 and predicted.shape == (c,)
    np.testing.assert_allclose(predicted.numpy(), truth, rtol=1e-10)


@pytest.mark.parametrize("seed", range(3))
def test_equals_the_direct_implementation_off_the_line(seed):
    rng = np.random.default_rng(100 + seed)
    c = 5
    agr_ref = _symmetric(c, rng.uniform(0.6, 1.0, c * (c - 1) // 2))
    agr_tgt = _symmetric(c, rng.uniform(0.4, 0.9, c * (c - 1) // 2))
    acc = rng.uniform(0.5, 1.0, c)
    acc[0] = 1.0  # clipped
    predicted = aline_d(_t(agr_ref), _t(agr_tgt), _t(acc), eps=1e-3)
    np.testing.assert_allclose(predicted.numpy(), _direct(agr_ref, agr_tgt, acc, 1e-3), rtol=1e-10)


def test_rates_of_zero_and_one_are_clipped_to_eps():
    agr_ref, agr_tgt, acc, _ = _on_the_line(4, slope=1.2, intercept=0.1, seed=9)
    agr_ref[0, 1] = agr_ref[1, 0] = 1.0
    agr_tgt[2, 3] = agr_tgt[3, 2] = 0.0
    acc[1] = 1.0
    predicted = aline_d(_t(agr_ref), _t(agr_tgt), _t(acc), eps=0.01)
    assert torch.isfinite(predicted).all()
    clipped = [np.clip(a, 0.01, 0.99) for a in (agr_ref, agr_tgt, acc)]
    np.testing.assert_allclose(predicted.numpy(), aline_d(*map(_t, clipped), eps=0.01).numpy(), rtol=1e-12)
    np.testing.assert_allclose(predicted.numpy(), _direct(agr_ref, agr_tgt, acc, 0.01), rtol=1e-10)


def test_a_memorised_reference_leaves_the_target_agreements_alone():
    """Every checkpoint right on every reference sample: no line to fit, and x_i from the target's agreements."""
    agr_tgt = _symmetric(3, np.array([0.8, 0.7, 0.9]))  # pairs (0, 1), (0, 2), (1, 2)
    predicted = aline_d(torch.ones(3, 3, dtype=torch.float64), _t(agr_tgt), torch.ones(3, dtype=torch.float64))
    t01, t02, t12 = ndtri([0.8, 0.7, 0.9])
    np.testing.assert_allclose(predicted.numpy(), ndtr([t01 + t02 - t12, t01 + t12 - t02, t02 + t12 - t01]))


def test_at_least_three_checkpoints_and_bad_arguments():
    agr_ref, agr_tgt, acc, _ = _on_the_line(3, slope=1.0, intercept=0.0, seed=1)
    with pytest.raises(ValueError, match="at least 3 checkpoints"):
        aline_d(_t(agr_ref[:2, :2]), _t(agr_tgt[:2, :2]), _t(acc[:2]))
    with pytest.raises(ValueError, match="must be \\[C, C\\]"):
        aline_d(_t(agr_ref), _t(agr_tgt[:2, :2]), _t(acc))
    with pytest.raises(ValueError, match="eps"):
        aline_d(_t(agr_ref), _t(agr_tgt), _t(acc), eps=0.5)
    with pytest.raises(ValueError, match="lie in \\[0, 1\\]"):
        aline_d(_t(agr_ref), _t(agr_tgt), _t(acc + 0.5))
    with pytest.raises(ValueError, match="NaN"):
        aline_d(_t(agr_ref), _t(agr_tgt * np.nan), _t(acc))


def test_agreement_rates_count_equal_predictions():
    predictions = torch.tensor([[0, 1, 2, 2], [0, 1, 1, 2], [1, 1, 1, 0]])
    expected = torch.tensor([[1.0, 0.75, 0.25], [0.75, 1.0, 0.5], [0.25, 0.5, 1.0]], dtype=torch.float64)
    assert torch.equal(agreement_rates(predictions), expected)
    for bad in (torch.zeros(3, 0, dtype=torch.long), torch.zeros(3, 4), torch.zeros(4, dtype=torch.long)):
        with pytest.raises(ValueError):
            agreement_rates(bad)
