import importlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jacrev

from lightning_gensens.functional.active_node_bound import relu_preactivations
from lightning_gensens.functional.tangent_sensitivity import (
    relu_mlp_layers,
    supports_closed_form,
    tangent_sample_sensitivity,
    tangent_sensitivity_from_masks,
    tangent_sensitivity_hutchinson,
)
from tests.helpers import bn_cnn, toy_mlp

ts = importlib.import_module("lightning_gensens.functional.tangent_sensitivity")  # the module, not the function


def dense_tangent(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Σ_o ‖∂²f_o/∂θ∂x‖²_F per sample from the full mixed derivative (jacrev over x of grad over θ)."""
    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    out = []
    for xn in x:
        total = torch.zeros((), dtype=x.dtype)
        for o in range(model(xn[None]).shape[1]):

            def f_o(p, xx, o=o):
                return functional_call(model, p, (xx[None],))[0, o]

            mixed = jacrev(grad(f_o), argnums=1)(params, xn)
            total = total + sum(v.square().sum() for v in mixed.values())
        out.append(total)
    return torch.stack(out)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("widths", [(3, 2), (5, 7, 3), (5, 7, 6, 3), (4, 6, 5, 6, 5, 2), (12, 4, 8, 3)])
def test_exact_equals_dense_mixed_derivative(widths, bias):
    net = toy_mlp(widths, bias=bias, seed=sum(widths))
    x = torch.randn(5, widths[0], dtype=torch.float64)
    exact, dense = tangent_sample_sensitivity(net, x, method="exact"), dense_tangent(net, x)
    assert exact.shape == (5,) and exact.dtype == torch.float64
    torch.testing.assert_close(exact, dense, rtol=1e-10, atol=1e-12 * float(dense.max()))


def test_exact_with_flatten_dropout_identity_and_training_mode_restored():
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Flatten(),
        nn.Linear(6, 8),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Sequential(nn.Linear(8, 7), nn.ReLU(), nn.Identity()),
        nn.Linear(7, 4),
    ).double()
    net.train()
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    exact = tangent_sample_sensitivity(net, x, method="exact")
    assert net.training and net[3].training
    torch.testing.assert_close(exact, dense_tangent(net, x), rtol=1e-10, atol=0.0)


def test_wrapper_module_in_registration_order_is_exact():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = toy_mlp((5, 6, 4), seed=3)

        def forward(self, x):
            return self.net(x)

    net, x = Wrapper(), torch.randn(3, 5, dtype=torch.float64)
    assert relu_mlp_layers(net)[1] is False
    torch.testing.assert_close(
        tangent_sample_sensitivity(net, x, method="exact"), dense_tangent(net, x), rtol=1e-10, atol=0.0
    )


def test_functional_relu_is_detected_and_auto_falls_back():
    class FunctionalRelu(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

        def forward(self, x):
            return self.b(F.relu(self.a(x)))

    net, x = FunctionalRelu().double(), torch.randn(3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="registration order"):
        tangent_sample_sensitivity(net, x, method="exact")
    auto = tangent_sample_sensitivity(net, x, n_probes=4, generator=torch.Generator().manual_seed(0))
    hutch = tangent_sample_sensitivity(
        net, x, method="hutchinson", n_probes=4, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(auto, hutch)


def test_constant_inside_activation_region():
    net = toy_mlp((6, 10, 10, 3), seed=4)
    x = torch.randn(8, 6, dtype=torch.float64)
    moved = x + 1e-7 * torch.randn_like(x)
    before = [h > 0 for h in relu_preactivations(net, x)]
    after = [h > 0 for h in relu_preactivations(net, moved)]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    t, t_moved = tangent_sample_sensitivity(net, x), tangent_sample_sensitivity(net, moved)
    assert torch.equal(t, t_moved)
    torch.testing.assert_close(dense_tangent(net, moved), t, rtol=1e-10, atol=0.0)


def test_from_masks_matches_inputs_and_checks_shapes(monkeypatch):
    net = toy_mlp((5, 7, 6, 3), seed=5)
    x = torch.randn(9, 5, dtype=torch.float64)
    masks = [h > 0 for h in relu_preactivations(net, x)]
    from_x = tangent_sample_sensitivity(net, x, method="exact")
    torch.testing.assert_close(tangent_sensitivity_from_masks(net, masks), from_x, rtol=1e-12, atol=0.0)
    monkeypatch.setattr(ts, "_CHUNK_ELEMENTS", 1)  # one sample per chunk
    torch.testing.assert_close(tangent_sensitivity_from_masks(net, masks), from_x, rtol=1e-12, atol=0.0)
    with pytest.raises(ValueError, match="2 ReLU calls"):
        tangent_sensitivity_from_masks(net, masks[:1])
    with pytest.raises(ValueError, match="7 outputs"):
        tangent_sensitivity_from_masks(net, [masks[1], masks[0]])


def test_zero_when_a_whole_layer_is_inactive():
    net = toy_mlp((4, 6, 5, 3), seed=6)
    with torch.no_grad():
        net[2].bias.fill_(-1e6)
    assert torch.equal(
        tangent_sample_sensitivity(net, torch.randn(3, 4, dtype=torch.float64)), torch.zeros(3, dtype=torch.float64)
    )


def test_hutchinson_converges_to_exact_on_mlp():
    net = toy_mlp((6, 8, 7, 4), seed=7)
    x = torch.randn(6, 6, dtype=torch.float64)
    exact = tangent_sample_sensitivity(net, x, method="exact")
    est, stderr = tangent_sensitivity_hutchinson(net, x, n_probes=400, generator=torch.Generator().manual_seed(1))
    assert bool((stderr < 0.05 * exact).all())
    assert bool(((est - exact).abs() < 4 * stderr + 1e-12).all()), (est, exact, stderr)


@pytest.mark.parametrize("kind", ["cnn_batchnorm", "gelu_mlp"])
def test_hutchinson_converges_to_dense_beyond_relu_mlps(kind):
    net = bn_cnn() if kind == "cnn_batchnorm" else toy_mlp((5, 6, 6, 3), seed=8, activation=nn.GELU)
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64) if kind == "cnn_batchnorm" else torch.randn(3, 5).double()
    assert not supports_closed_form(net)
    dense = dense_tangent(net, x)
    est, stderr = tangent_sensitivity_hutchinson(net, x, n_probes=300, generator=torch.Generator().manual_seed(2))
    assert bool((stderr < 0.05 * dense).all())
    assert bool(((est - dense).abs() < 4 * stderr).all()), (est, dense, stderr)


def test_auto_picks_exact_or_hutchinson():
    mlp, x = toy_mlp((5, 7, 3), seed=9), torch.randn(4, 5, dtype=torch.float64)
    assert torch.equal(tangent_sample_sensitivity(mlp, x), tangent_sample_sensitivity(mlp, x, method="exact"))
    cnn, xc = bn_cnn(), torch.randn(2, 1, 4, 4, dtype=torch.float64)
    auto = tangent_sample_sensitivity(cnn, xc, n_probes=3, generator=torch.Generator().manual_seed(3))
    est = ts._hutchinson_probes(cnn, xc, 3, torch.Generator().manual_seed(3)).mean(0)
    torch.testing.assert_close(auto, est)


def test_exact_refuses_other_layers_naming_them():
    with pytest.raises(ValueError, match="'0' is Conv2d"):
        tangent_sample_sensitivity(bn_cnn(), torch.randn(2, 1, 4, 4, dtype=torch.float64), method="exact")
    with pytest.raises(ValueError, match="'1' is GELU"):
        tangent_sample_sensitivity(toy_mlp(activation=nn.GELU), torch.randn(2, 5, dtype=torch.float64), method="exact")
    with pytest.raises(ValueError, match="last axis"):
        tangent_sample_sensitivity(toy_mlp((3, 4, 2)), torch.randn(2, 5, 3, dtype=torch.float64), method="exact")


def test_inference_mode_no_grad_leak_and_bad_arguments():
    net = toy_mlp((5, 6, 3), seed=10)
    x = torch.randn(3, 5, dtype=torch.float64)
    with torch.inference_mode():
        exact = tangent_sample_sensitivity(net, x, method="exact")
        est, _ = tangent_sensitivity_hutchinson(net, x, n_probes=2)
    assert exact.shape == est.shape == (3,)
    assert all(p.grad is None for p in net.parameters())
    with pytest.raises(ValueError, match="method"):
        tangent_sample_sensitivity(net, x, method="dense")
    with pytest.raises(ValueError, match="n_probes >= 2"):
        tangent_sensitivity_hutchinson(net, x, n_probes=1)
    with pytest.raises(ValueError, match="at least one sample"):
        tangent_sample_sensitivity(net, x[:0])
    assert supports_closed_form(net)
    with torch.no_grad():
        net[0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="'0.weight'"):
        tangent_sample_sensitivity(net, x)
