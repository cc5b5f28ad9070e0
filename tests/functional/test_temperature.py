"""Temperature scaling against a grid search, and the confidence baselines on the scaled softmax against DoC
(T = 1) and a sample-by-sample computation."""

import numpy as np
import pytest
import torch

from lightning_gensens.functional import (
    difference_of_confidences,
    difference_of_entropies,
    fit_temperature,
    mean_confidence,
    scaled_difference_of_confidences,
    temperature,
)
from tests.functional.test_transport import _logits


def test_the_temperature_minimises_the_nll_over_a_grid():
    logits = _logits(8, n=400, k=5, scale=4.0)  # overconfident: noisy labels
    labels = torch.where(
        torch.rand(400, generator=torch.Generator().manual_seed(3)) < 0.7,
        logits.argmax(1),
        torch.randint(0, 5, (400,), generator=torch.Generator().manual_seed(4)),
    )
    t = float(fit_temperature(logits, labels))
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 4001))
    nll = [float(torch.nn.functional.cross_entropy(logits / g, labels)) for g in grid]
    best = grid[int(np.argmin(nll))]
    assert t == pytest.approx(best, rel=2e-3)
    assert float(torch.nn.functional.cross_entropy(logits / t, labels)) <= min(nll) + 1e-9
    assert t > 1  # overconfident logits are softened


def test_the_temperature_is_the_exact_minimiser():
    # the root of f'(β) = E[E_p z − z_y] by bisection to the last bit, with p = softmax(βz) as the NLL reads it
    logits = _logits(21, n=256, k=10, scale=3.0)
    labels = torch.where(torch.rand(256, generator=torch.Generator().manual_seed(6)) < 0.8, logits.argmax(1), 0)

    def slope(beta: float) -> float:
        p = torch.softmax(beta * logits.double(), 1)
        return float(((p * logits).sum(1) - logits.gather(1, labels[:, None]).squeeze(1)).mean())

    lo, hi = 1 / 20, 1 / 0.05
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if slope(mid) > 0 else (mid, hi)
    assert float(fit_temperature(logits, labels)) == pytest.approx(2 / (lo + hi), rel=1e-8)


def test_the_fit_takes_a_few_passes(monkeypatch):
    # a Newton step rounded onto the bracket's end stops the fit, rather than bisecting towards it pass after pass
    passes = []
    moments = temperature._moments
    monkeypatch.setattr(temperature, "_moments", lambda *args: passes.append(1) or moments(*args))
    g = torch.Generator().manual_seed(1)
    for scale in (0.3, 1.0, 3.0, 10.0, 30.0):
        for right in (128, 204, 243):
            logits = torch.randn(256, 10, generator=g, dtype=torch.float64) * scale
            labels = torch.randint(0, 10, (256,), generator=g)
            labels[:right] = logits[:right].argmax(1)
            passes.clear()
            fit_temperature(logits, labels)
            assert len(passes) <= 10


@pytest.mark.parametrize("steps", [1, 2, 100])
def test_the_fit_reads_the_scaled_means_at_its_temperature(monkeypatch, steps):
    # the means from the fit's last pass, as _scaled_means reads them, however the fit ends (converged, at a bound,
    # out of steps)
    monkeypatch.setattr(temperature, "_NEWTON_STEPS", steps)
    logits = _logits(22, n=200, k=6, scale=2.0)
    for labels in (logits.argmax(1), torch.randint(0, 6, (200,), generator=torch.Generator().manual_seed(7))):
        t, confidence, entropy = temperature._fit_temperature(logits, labels)
        assert float(t) == float(fit_temperature(logits, labels))
        expected = temperature._scaled_means(logits, t)
        assert float(confidence) == pytest.approx(float(expected[0]), rel=1e-12)
        assert float(entropy) == pytest.approx(float(expected[1]), rel=1e-12)


def test_difference_of_entropies_at_temperature_one_is_doc_loss_side():
    ref, tgt = _logits(9, n=50), _logits(10, n=40, scale=1.0)

    def entropy(z):
        log_p = torch.log_softmax(z, 1)
        return -(log_p.exp() * log_p).sum(1).mean()

    expected = 0.7 + entropy(tgt) - entropy(ref)
    assert float(difference_of_entropies(ref, 0.7, tgt)) == pytest.approx(float(expected), rel=1e-12)


def test_the_temperature_stops_at_the_bounds_where_the_minimum_lies_beyond():
    logits = _logits(17, n=300, k=5)
    assert float(fit_temperature(logits, logits.argmax(1))) == 0.05  # every label the argmax: the sharper the better
    labels = torch.randint(0, 5, (300,), generator=torch.Generator().manual_seed(5))
    flat = float(fit_temperature(logits, labels))
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 2001))
    nll = [float(torch.nn.functional.cross_entropy(logits / g, labels)) for g in grid]
    assert float(torch.nn.functional.cross_entropy(logits / flat, labels)) <= min(nll) + 1e-9  # labels near chance
    assert flat > 5


def test_mean_confidence_sample_by_sample():
    logits, t = _logits(12, n=30, k=5), 2.5
    expected = sum(max(np.exp(z / t) / np.exp(z / t).sum()) for z in logits.numpy()) / 30
    assert float(mean_confidence(logits, t)) == pytest.approx(expected, rel=1e-12)


def test_scaled_doc_at_temperature_one_is_doc_and_predicts_the_reference_exactly():
    ref, tgt = _logits(13, n=60), _logits(14, n=40, scale=1.5)
    doc = difference_of_confidences(ref, tgt, ref_loss=0.5, ref_error=0.3)["error"]
    assert float(scaled_difference_of_confidences(ref, 0.3, tgt)) == pytest.approx(float(doc), rel=1e-12)
    assert float(scaled_difference_of_confidences(ref, 0.3, ref, 1.7)) == pytest.approx(0.3, abs=1e-15)


def test_scaled_doc_is_a_rate_and_the_temperature_moves_it():
    ref, tgt = _logits(15, n=60, scale=6.0), _logits(16, n=40, scale=0.1)  # the target far less confident
    assert float(scaled_difference_of_confidences(ref, 0.9, tgt)) == 1.0  # clipped
    low, high = (float(scaled_difference_of_confidences(ref, 0.1, tgt, t)) for t in (1.0, 4.0))
    assert high < low  # a softer softmax narrows the confidence gap


def test_bad_temperature_inputs_are_refused():
    logits = _logits(11, n=5)
    with pytest.raises(ValueError, match="integer class indices"):
        fit_temperature(logits, torch.zeros(5))
    with pytest.raises(ValueError, match="temperature must be positive"):
        mean_confidence(logits, -1.0)
    with pytest.raises(ValueError, match=r"reference_error must be in \[0, 1\]"):
        scaled_difference_of_confidences(logits, 1.5, logits)
