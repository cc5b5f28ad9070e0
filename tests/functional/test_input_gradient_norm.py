"""input_gradient_norm against a per-sample autograd loop, the √d law at He initialisation, bad input."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_gensens.functional.input_gradient_norm import (
    _input_gradient_norm_compute,
    _input_gradient_norm_update,
    input_gradient_norm,
)
from lightning_gensens.models import mlp, small_cnn


def per_sample_loop(model: nn.Module, x: Tensor, y: Tensor, q: float) -> Tensor:
    norms = []
    for xn, yn in zip(x, y, strict=True):
        xn = xn[None].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(xn), yn[None]), xn)
        norms.append(torch.linalg.vector_norm(grad.flatten(), ord=q))
    return torch.stack(norms)


def bn_cnn() -> nn.Module:
    torch.manual_seed(0)
    model = small_cnn(1, side=6, num_classes=4, width=3).double()
    with torch.no_grad():
        model(torch.randn(16, 1, 6, 6, dtype=torch.float64))  # running statistics
    return model.eval()


@pytest.mark.parametrize("kind", ["mlp", "bn_cnn"])
def test_equals_per_sample_loop(kind: str) -> None:
    torch.manual_seed(1)
    model = mlp(7, 4, hidden=(9, 5)).double().eval() if kind == "mlp" else bn_cnn()
    shape = (7,) if kind == "mlp" else (1, 6, 6)
    x, y = torch.randn(10, *shape, dtype=torch.float64), torch.randint(0, 4, (10,))
    both = input_gradient_norm(model, x, y, q=(1, 2))
    assert both.shape == (2, 10)
    for row, q in enumerate((1, 2)):
        expected = per_sample_loop(model, x, y, q)
        torch.testing.assert_close(input_gradient_norm(model, x, y, q=q), expected, rtol=1e-12, atol=0)
        torch.testing.assert_close(both[row], expected, rtol=1e-12, atol=0)
    assert all(p.grad is None for p in model.parameters())


def test_statistics_functions() -> None:
    torch.manual_seed(2)
    model = mlp(7, 4, hidden=(9,)).double().eval()
    x, y = torch.randn(10, 7, dtype=torch.float64), torch.randint(0, 4, (10,))
    sums, counts = zip(
        *(_input_gradient_norm_update(model, x[i : i + 4], y[i : i + 4], q=(1, 2)) for i in range(0, 10, 4)),
        strict=True,
    )
    value = _input_gradient_norm_compute(torch.stack(sums).sum(0), torch.stack(counts).sum())
    torch.testing.assert_close(value, input_gradient_norm(model, x, y, q=(1, 2)).mean(1))
    assert counts[0].dtype == torch.int64 and int(sum(counts)) == 10


def test_under_inference_mode() -> None:
    model = bn_cnn()
    x, y = torch.randn(5, 1, 6, 6, dtype=torch.float64), torch.randint(0, 4, (5,))
    expected = input_gradient_norm(model, x, y, q=2)
    with torch.inference_mode():
        got = input_gradient_norm(model, x.clone(), y.clone(), q=2)
    torch.testing.assert_close(got, expected)


def he_initialised(model: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=gen)
            nn.init.zeros_(m.bias)
    return model.eval()


def log_log_slope(make: Callable[[int], nn.Module], seeds: int = 4, samples: int = 32) -> float:
    """Slope of log E‖∂ₓL‖₁ against log d for 8×8 inputs upsampled by pixel replication to d = 64 … 4,096."""
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(samples, 1, 8, 8, generator=gen)
    y = torch.randint(0, 10, (samples,), generator=gen)
    log_d, log_norm = [], []
    for s in (1, 2, 4, 8):
        x = base.repeat_interleave(s, -1).repeat_interleave(s, -2)
        models = [he_initialised(make(8 * s), seed) for seed in range(seeds)]
        norms = [input_gradient_norm(model, x, y, q=1).mean() for model in models]
        log_d.append(math.log(x[0].numel()))
        log_norm.append(math.log(float(torch.stack(norms).mean())))
    d, n = torch.tensor(log_d), torch.tensor(log_norm)
    return float(((d - d.mean()) * (n - n.mean())).sum() / (d - d.mean()).square().sum())


@pytest.mark.parametrize("kind", ["fc", "cnn"])
def test_sqrt_d_law_at_he_initialisation(kind: str) -> None:
    """Simon-Gabriel et al. Thm 4 (FC) and Cor. 6 (CNN with a flatten + dense head): ‖∂ₓL‖₁ ∝ √d."""
    if kind == "fc":
        slope = log_log_slope(lambda side: mlp(side * side, 10, hidden=(128, 128)))
    else:
        slope = log_log_slope(lambda side: small_cnn(1, side, 10, width=8, batch_norm=False))
    assert abs(slope - 0.5) < 0.1, slope


def test_bad_input() -> None:
    model = bn_cnn()
    x, y = torch.randn(4, 1, 6, 6, dtype=torch.float64), torch.randint(0, 4, (4,))
    with pytest.raises(ValueError, match="needs labels"):
        input_gradient_norm(model, x, None)
    with pytest.raises(ValueError, match="q >= 1"):
        input_gradient_norm(model, x, y, q=0.5)
    model.train()
    with pytest.raises(ValueError, match="BatchNorm '1'"):
        input_gradient_norm(model, x, y)
    model.eval()
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        input_gradient_norm(model, x, y)
