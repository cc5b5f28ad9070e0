import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian

from lightning_gensens.functional.jacobian_norm import _jacobian_norm_compute, _jacobian_norm_update, jacobian_norm
from tests.helpers import bn_cnn, toy_mlp


def brute_force(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """‖∂f/∂x‖_F one sample at a time from the full Jacobian."""
    net.eval()
    return torch.stack([jacobian(lambda xx: net(xx[None])[0], xn).flatten().norm() for xn in x])


@pytest.mark.parametrize("kind", ["relu_mlp", "gelu_mlp", "cnn_batchnorm"])
def test_equals_per_sample_brute_force(kind):
    if kind == "cnn_batchnorm":
        net, x = bn_cnn(), torch.randn(6, 1, 4, 4, dtype=torch.float64)
    else:
        net = toy_mlp((5, 8, 7, 3), seed=1, activation=nn.ReLU if kind == "relu_mlp" else nn.GELU)
        x = torch.randn(6, 5, dtype=torch.float64)
    net.train()
    got = jacobian_norm(net, x)
    assert net.training and got.shape == (6,)
    torch.testing.assert_close(got, brute_force(net, x), rtol=1e-12, atol=0.0)


def test_statistics_inference_mode_and_no_grad_leak():
    net = bn_cnn().eval()
    x = torch.randn(10, 1, 4, 4, dtype=torch.float64)
    with torch.inference_mode():
        parts = [_jacobian_norm_update(net, p) for p in x.split(4)]
    count, total = sum(c for c, _ in parts), sum(t for _, t in parts)
    assert count.dtype == torch.int64 and total.dtype == torch.float64
    torch.testing.assert_close(_jacobian_norm_compute(count, total), jacobian_norm(net, x).mean(), rtol=1e-13, atol=0.0)
    assert all(p.grad is None for p in net.parameters())
    with pytest.raises(ValueError, match="empty"):
        _jacobian_norm_compute(torch.tensor(0), torch.tensor(0.0))
    with torch.no_grad():
        net[0].bias[0] = float("inf")
    with pytest.raises(ValueError, match="'0.bias'"):
        jacobian_norm(net, x)
