"""Calibrated weight-perturbation disagreement against a brute force over explicitly perturbed copies of the
network, its calibration's defining property, its limits as σ → 0, and the weights left as they were."""

import copy
import math

import pytest
import torch
from torch import nn

from lightning_gensens.functional import (
    calibrated_log_sigma,
    perturbation_curves,
    perturbation_disagreement,
    read_curve,
)
from lightning_gensens.functional.perturbation import SIGMAS, _draw_seed
from tests.helpers import toy_mlp

GRID = (0.05, 0.2, 0.8, 3.0)


def _x(n: int = 40, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _brute_force(net: nn.Module, x: torch.Tensor, sigmas, draws: int, seed: int) -> tuple[list[float], list[float]]:
    """Per σ: over samples and explicit perturbed copies, the share of changed predictions and the mean
    −log p(perturbed prediction), sample by sample."""
    p = torch.softmax(net(x).detach(), dim=1)
    flips, ce = [0.0] * len(sigmas), [0.0] * len(sigmas)
    for k in range(draws):
        g = torch.Generator().manual_seed(_draw_seed(seed, k))
        noise = [
            w.detach().pow(2).mean().sqrt() * torch.randn(w.shape, generator=g, dtype=w.dtype) for w in net.parameters()
        ]
        for j, sigma in enumerate(sigmas):
            copy_ = copy.deepcopy(net)
            with torch.no_grad():
                for w, e in zip(copy_.parameters(), noise, strict=True):
                    w.add_(sigma * e)
            for i in range(x.shape[0]):
                vote = int(copy_(x[i : i + 1]).argmax())
                flips[j] += float(vote != int(p[i].argmax()))
                ce[j] += -math.log(float(p[i, vote]))
    n = x.shape[0] * draws
    return [f / n for f in flips], [c / n for c in ce]


def test_curves_equal_a_brute_force_over_perturbed_copies():
    net, x = toy_mlp(), _x()
    disagreement, cross_entropy = perturbation_curves(net, x, GRID, draws=3, seed=7)
    flips, ce = _brute_force(net, x, GRID, 3, 7)
    assert torch.allclose(disagreement, torch.tensor(flips, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(cross_entropy, torch.tensor(ce, dtype=torch.float64), rtol=1e-10)
    assert float(disagreement[-1]) > float(disagreement[0])  # the grid spans agreement to disagreement


def test_as_sigma_vanishes_nothing_flips_and_the_loss_is_the_networks_own_confidence_loss():
    net, x = toy_mlp(), _x()
    disagreement, cross_entropy = perturbation_curves(net, x, (1e-9, 1e-8), draws=2)
    confidence_loss = -torch.log_softmax(net(x).detach(), dim=1).max(dim=1).values.mean()
    assert float(disagreement.abs().max()) == 0.0
    assert torch.allclose(cross_entropy, confidence_loss.expand(2), rtol=1e-12)


def test_weights_are_restored_bit_for_bit_and_the_global_rng_is_untouched():
    net, x = toy_mlp(), _x()
    before = copy.deepcopy(net.state_dict())
    state = torch.get_rng_state()
    perturbation_curves(net, x, GRID, draws=2)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_weights_are_restored_when_the_forward_raises():
    net = toy_mlp()
    before = copy.deepcopy(net.state_dict())
    calls = {"n": 0}

    def fail_on_the_third_call(module, args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("out of memory")

    handle = net.register_forward_pre_hook(fail_on_the_third_call)
    with pytest.raises(RuntimeError, match="out of memory"):
        perturbation_curves(net, _x(), GRID, draws=2)
    handle.remove()
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_the_calibrated_scale_reproduces_the_reference_error():
    net, x = toy_mlp(), _x(200)
    curves = perturbation_curves(net, x, SIGMAS, draws=4)
    for error in (0.05, 0.2, 0.4):
        log_sigma = calibrated_log_sigma(curves[0], error)
        assert float(read_curve(torch.cummax(curves[0], 0).values, log_sigma)) == pytest.approx(error, abs=1e-12)
        predicted, loss = perturbation_disagreement(curves, error, curves)
        assert float(predicted) == pytest.approx(error, abs=1e-12)  # the reference predicts itself
        assert float(loss) >= 0


def test_calibration_interpolates_in_log_sigma_and_clamps_at_the_grid_ends():
    sigmas = (0.1, 1.0, 10.0)
    curve = torch.tensor([0.1, 0.3, 0.5], dtype=torch.float64)
    assert float(calibrated_log_sigma(curve, 0.2, sigmas)) == pytest.approx(math.log(10**-0.5))
    assert float(calibrated_log_sigma(curve, 0.0, sigmas)) == pytest.approx(math.log(0.1))
    assert float(calibrated_log_sigma(curve, 0.9, sigmas)) == pytest.approx(math.log(10.0))
    # a dip (Monte-Carlo noise) is read through the running maximum
    dipped = torch.tensor([0.1, 0.3, 0.25, 0.5], dtype=torch.float64)
    grid = (0.1, 1.0, 10.0, 100.0)
    assert float(calibrated_log_sigma(dipped, 0.4, grid)) == pytest.approx(math.log(10**1.5))
    target = torch.tensor([0.0, 0.2, 0.6], dtype=torch.float64)
    assert float(read_curve(target, calibrated_log_sigma(curve, 0.2, sigmas), sigmas)) == pytest.approx(0.1)


def test_predictions_stay_a_rate_and_a_non_negative_loss():
    curve = (torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64), torch.tensor([0.1, 0.5, 2.0], dtype=torch.float64))
    error, loss = perturbation_disagreement(curve, 1.0, curve, (0.1, 1.0, 10.0))
    assert 0.0 <= float(error) <= 1.0 and float(loss) >= 0.0


def test_bad_arguments():
    net, x = toy_mlp(), _x()
    with pytest.raises(ValueError, match="increasing"):
        perturbation_curves(net, x, (0.5, 0.1))
    with pytest.raises(ValueError, match="at least two"):
        perturbation_curves(net, x, (0.5,))
    with pytest.raises(ValueError, match="draws"):
        perturbation_curves(net, x, GRID, draws=0)
    with pytest.raises(ValueError, match="at least one sample"):
        perturbation_curves(net, x[:0], GRID)
    with pytest.raises(ValueError, match=r"rate in \[0, 1\]"):
        calibrated_log_sigma(torch.zeros(len(SIGMAS), dtype=torch.float64), 1.5)
    broken = toy_mlp()
    with torch.no_grad():
        broken[0].weight[0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        perturbation_curves(broken, x, GRID)
