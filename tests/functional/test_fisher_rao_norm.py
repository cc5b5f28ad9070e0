import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.functional import jacobian

from lightning_gensens.functional.fisher_rao_norm import (
    _fisher_rao_norm_compute,
    _fisher_rao_norm_update,
    fisher_rao_norm,
    fisher_rao_norm_per_sample,
)
from lightning_gensens.models import small_cnn
from tests.helpers import toy_mlp


def brute_force(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Σ_j ⟨∂L(f, j)/∂f, f⟩² one sample and one label at a time, ∂L/∂f from autograd."""
    net.eval()
    values = []
    for xn in x:
        f = net(xn[None])[0].detach()
        total = torch.zeros((), dtype=f.dtype)
        for j in range(f.numel()):
            dl_df = jacobian(lambda ff, j=j: F.cross_entropy(ff[None], torch.tensor([j])), f)
            total = total + (dl_df @ f) ** 2
        values.append(total)
    return torch.stack(values)


@pytest.mark.parametrize("kind", ["relu_mlp", "gelu_mlp", "cnn_batchnorm"])
def test_equals_per_sample_brute_force(kind):
    if kind == "cnn_batchnorm":
        net, x = small_cnn(in_channels=1, side=4, width=3).double(), torch.randn(5, 1, 4, 4, dtype=torch.float64)
    else:
        net = toy_mlp((5, 8, 7, 4), seed=2, activation=nn.ReLU if kind == "relu_mlp" else nn.GELU)
        x = torch.randn(5, 5, dtype=torch.float64)
    with torch.no_grad():
        x = 3 * x  # logits far from zero
    net.train()
    per_sample = fisher_rao_norm_per_sample(net, x)
    assert net.training and per_sample.shape == (5,) and per_sample.dtype == torch.float64
    torch.testing.assert_close(per_sample, brute_force(net, x), rtol=1e-12, atol=0.0)
    torch.testing.assert_close(fisher_rao_norm(net, x), per_sample.mean(), rtol=1e-15, atol=0.0)


def test_statistics_from_captured_logits():
    net = toy_mlp((5, 8, 3), seed=3).eval()
    x = torch.randn(11, 5, dtype=torch.float64)
    with torch.inference_mode():
        parts = [_fisher_rao_norm_update(net(p)) for p in x.split(4)]
    count, total = sum(c for c, _ in parts), sum(t for _, t in parts)
    assert count.dtype == torch.int64 and total.dtype == torch.float64
    torch.testing.assert_close(_fisher_rao_norm_compute(count, total), fisher_rao_norm(net, x), rtol=1e-13, atol=0.0)
    with pytest.raises(ValueError, match=r"\[B, K\]"):
        _fisher_rao_norm_update(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="empty"):
        _fisher_rao_norm_compute(torch.tensor(0), torch.tensor(0.0))
