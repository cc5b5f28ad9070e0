import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import grad, jacrev

from lightning_gensens.functional import layer_linf_norms, linf_sensitivity_bound, log_linf_sensitivity_bound
from tests.helpers import toy_mlp


def test_layer_norms_and_bound_match_direct_formula():
    net = toy_mlp((6, 9, 4, 3))
    weights = [m.weight.detach().numpy() for m in net if isinstance(m, nn.Linear)]
    w = np.array([np.abs(W).max() for W in weights])
    assert torch.allclose(layer_linf_norms(net), torch.from_numpy(w))
    n_theta = sum(p.numel() for p in net.parameters())
    expected = n_theta * 6 * 9 ** (2 * 2) * (w.prod() / w.min()) ** 2
    assert math.isclose(float(linf_sensitivity_bound(net, 6)), expected, rel_tol=1e-12)


@pytest.mark.parametrize("widths", [(4, 5, 1), (3, 6, 5, 1), (4, 3, 3, 3, 1)])
def test_bound_dominates_dense_tangent_sensitivity(widths):
    """Theorem 3.1: E‖∂²f/∂θ∂x‖²_F ≤ Sens¹ for a biasless ReLU net (one output, dense autograd reference)."""
    net = toy_mlp(widths, bias=False, seed=3)
    names = [n for n, _ in net.named_parameters()]
    params = {n: p.detach() for n, p in net.named_parameters()}

    def f(p, x):
        return torch.func.functional_call(net, p, (x[None],)).squeeze()

    x = torch.randn(16, widths[0], dtype=torch.float64)
    mixed = [jacrev(grad(f, argnums=1), argnums=0)(params, xi) for xi in x]
    t = torch.stack([sum(m[n].square().sum() for n in names) for m in mixed])
    assert float(t.mean()) > 0
    assert float(t.max()) <= float(linf_sensitivity_bound(net, widths[0]))


def test_log_form_is_finite_where_the_bound_overflows():
    net = nn.Sequential(*[nn.Linear(400, 400, bias=False) for _ in range(60)])
    with torch.no_grad():
        for m in net:
            m.weight.fill_(1e3)
    assert torch.isinf(linf_sensitivity_bound(net, 400))
    assert torch.isfinite(log_linf_sensitivity_bound(net, 400))


def test_bad_input():
    with pytest.raises(ValueError, match="no nn.Linear"):
        layer_linf_norms(nn.Sequential(nn.ReLU()))
    net = toy_mlp()
    with torch.no_grad():
        net[0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        linf_sensitivity_bound(net, 5)
