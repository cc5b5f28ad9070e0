"""relative_flatness against the dense layer Hessian, Petzka's invariances, DDP reduction and bad input."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from lightning_gensens.functional.relative_flatness import relative_flatness
from lightning_gensens.models import mlp, small_cnn

Batches = list[tuple[Tensor, Tensor]]


def dense_layer(
    model: nn.Module, batches: Batches, name: str, loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy
) -> dict[str, Tensor]:
    """λ_max, Tr and ρ of the dense Hessian of the mean loss w.r.t. one layer weight (eval mode)."""
    weight = dict(model.named_modules())[name].weight.detach()
    key = f"{name}.weight"
    total = sum(len(y) for _, y in batches)

    def loss(w: Tensor) -> Tensor:
        losses = [loss_fn(functional_call(model, {key: w}, (x,)), y) * len(y) for x, y in batches]
        return sum(losses) / total

    training = model.training
    model.eval()
    hessian = torch.autograd.functional.hessian(loss, weight)
    model.train(training)
    dim, n_out = weight.numel(), weight.shape[0]
    flat = hessian.reshape(dim, dim)
    blocks = flat.reshape(n_out, dim // n_out, n_out, dim // n_out)
    rows = weight.reshape(n_out, -1)
    rho = torch.stack([rows[j] @ blocks[j, :, j, :] @ rows[j] for j in range(n_out)])
    return {
        "lambda_max": torch.linalg.eigvalsh(flat)[-1],
        "trace": flat.trace(),
        "rho": rho,
        "norm_sq": weight.square().sum(),
    }


def data(n: int, shape: tuple[int, ...], classes: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, *shape, generator=gen, dtype=torch.float64), torch.randint(0, classes, (n,), generator=gen))


def relu_mlp() -> nn.Module:
    torch.manual_seed(0)
    return mlp(5, 3, hidden=(6, 4)).double()


def tanh_net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 4), nn.Tanh(), nn.Linear(4, 3)).double()


def bn_cnn() -> nn.Module:
    torch.manual_seed(2)
    model = small_cnn(1, side=6, num_classes=3, width=3).double()
    x, _ = data(16, (1, 6, 6), 3, seed=5)
    with torch.no_grad():
        for _ in range(3):  # non-trivial running statistics; the model stays in train mode
            model(x)
    return model


CASES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], dict[str, str]]] = {
    "relu_mlp": (relu_mlp, (5,), {"1": "gauss-newton", "3": "gauss-newton", "5": "gauss-newton"}),
    "tanh": (tanh_net, (5,), {"0": "basis", "2": "basis", "4": "gauss-newton"}),
    "bn_cnn": (bn_cnn, (1, 6, 6), {"0": "basis", "3": "basis", "8": "gauss-newton"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_dense_hessian_exactly_on_tiny_layers(case: str) -> None:
    make, shape, methods = CASES[case]
    model = make()
    x, y = data(20, shape, 3)
    batches = [(x[:13], y[:13]), (x[13:], y[13:])]  # unequal batches: mean weighted by batch size
    result = relative_flatness(model, batches, lanczos_tol=1e-12, trace_budget=300)
    assert model.training, "the model's mode must be restored"
    assert {n: result[n]["trace_method"] for n in methods} == methods
    for name in methods:
        ref, got = dense_layer(model, batches, name), result[name]
        torch.testing.assert_close(got["lambda_max"], ref["lambda_max"], rtol=1e-8, atol=0)
        torch.testing.assert_close(got["trace"], ref["trace"], rtol=1e-8, atol=1e-12)
        torch.testing.assert_close(got["rho"], ref["rho"], rtol=1e-8, atol=1e-12)
        torch.testing.assert_close(got["kappa"], ref["norm_sq"] * ref["lambda_max"], rtol=1e-8, atol=0)
        torch.testing.assert_close(got["kappa_tau"], ref["norm_sq"] * ref["trace"], rtol=1e-8, atol=1e-12)
        assert got["rho_max"] == got["rho"].max() and got["rho_sum"] == got["rho"].sum()
        assert got["lambda_max_error"] <= 1e-12 * got["lambda_max"].abs() + 1e-15
    for key, stat, op in (
        ("kappa_max", "kappa", max),
        ("kappa_sum", "kappa", sum),
        ("kappa_tau_max", "kappa_tau", max),
        ("kappa_tau_sum", "kappa_tau", sum),
        ("rho_max", "rho_max", max),
        ("rho_sum", "rho_sum", sum),
    ):
        torch.testing.assert_close(result[key], op(result[n][stat] for n in methods))


@pytest.mark.parametrize("net", ["relu_mlp", "tanh"])
def test_custom_loss(net: str) -> None:
    make, shape, methods = CASES[net]
    model = make()
    x, y = data(20, shape, 3)

    def smoothed(out: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(out, target, label_smoothing=0.2)

    result = relative_flatness(model, x, y, loss_fn=smoothed, lanczos_tol=1e-12)
    assert {n: result[n]["trace_method"] for n in methods} == methods
    for name in methods:
        ref = dense_layer(model, [(x, y)], name, smoothed)
        torch.testing.assert_close(result[name]["lambda_max"], ref["lambda_max"], rtol=1e-8, atol=0)
        torch.testing.assert_close(result[name]["trace"], ref["trace"], rtol=1e-8, atol=1e-12)
        torch.testing.assert_close(result[name]["rho"], ref["rho"], rtol=1e-8, atol=1e-12)


def test_default_lanczos_tolerance_on_a_wider_layer() -> None:
    torch.manual_seed(3)
    model = mlp(12, 4, hidden=(30, 20)).double()
    x, y = data(64, (12,), 4)
    result = relative_flatness(model, x, y, layers=["3"])
    ref = dense_layer(model, [(x, y)], "3")
    assert result["3"]["lanczos_iters"] < 30
    torch.testing.assert_close(result["3"]["lambda_max"], ref["lambda_max"], rtol=1e-4, atol=0)
    torch.testing.assert_close(result["3"]["trace"], ref["trace"], rtol=1e-10, atol=0)


def test_hutchpp_within_its_standard_error() -> None:
    torch.manual_seed(4)
    x, y = data(64, (12,), 4)
    relu = mlp(12, 4, hidden=(30, 20)).double()
    got = relative_flatness(relu, x, y, layers=["1", "3"], gauss_newton=False, trace_rtol=1e-3)
    for name in ("1", "3"):  # 360 and 600 weights > the default budget of 99 products
        ref = dense_layer(relu, [(x, y)], name)
        assert got[name]["trace_method"] == "hutch++" and got[name]["trace_hvps"] <= 99
        assert abs(got[name]["trace"] - ref["trace"]) <= 0.05 * ref["trace"]
        assert abs(got[name]["trace"] - ref["trace"]) <= 4 * got[name]["trace_stderr"] + 1e-12
        torch.testing.assert_close(got[name]["rho"], ref["rho"], rtol=1e-8, atol=1e-12)
    tanh = nn.Sequential(nn.Linear(12, 30), nn.Tanh(), nn.Linear(30, 4)).double()
    errors = []
    for seed in range(5):
        est = relative_flatness(tanh, x, y, layers=["0"], generator=torch.Generator().manual_seed(seed))["0"]
        errors.append(float((est["trace"] - dense_layer(tanh, [(x, y)], "0")["trace"]) / est["trace_stderr"]))
    assert max(abs(e) for e in errors) < 4, errors


def rescaled_layerwise(model: nn.Sequential, layer: int, scale: float) -> nn.Sequential:
    """W_l, b_l ← λ W_l, λ b_l and W_{l+1} ← W_{l+1}/λ: the same ReLU network function (Petzka Thm 2)."""
    out = copy.deepcopy(model)
    nxt = next(m for m in list(out)[layer + 1 :] if isinstance(m, nn.Linear))
    with torch.no_grad():
        out[layer].weight.mul_(scale)
        out[layer].bias.mul_(scale)
        nxt.weight.div_(scale)
    return out


def rescaled_neuronwise(model: nn.Sequential, layer: int, scales: Tensor) -> nn.Sequential:
    """Row j of W_l and b_l[j] ← λ_j·, column j of W_{l+1} ← /λ_j: the same function (Petzka Thm 3)."""
    out = copy.deepcopy(model)
    nxt = next(m for m in list(out)[layer + 1 :] if isinstance(m, nn.Linear))
    with torch.no_grad():
        out[layer].weight.mul_(scales[:, None])
        out[layer].bias.mul_(scales)
        nxt.weight.div_(scales[None, :])
    return out


def test_layerwise_reparameterisation_invariance() -> None:
    torch.manual_seed(5)
    model = mlp(6, 3, hidden=(8, 7)).double()
    x, y = data(40, (6,), 3)
    scale = float(5 + 20 * torch.rand((), generator=torch.Generator().manual_seed(6)))
    moved = rescaled_layerwise(model, 1, scale)
    torch.testing.assert_close(moved(x), model(x))
    kwargs = {"lanczos_tol": 1e-10}
    before, after = relative_flatness(model, x, y, **kwargs), relative_flatness(moved, x, y, **kwargs)
    for name in ("1", "3", "5"):
        for key in ("kappa", "kappa_tau"):
            torch.testing.assert_close(after[name][key], before[name][key], rtol=1e-7, atol=0)
    expected = before["1"]["lambda_max"] / scale**2
    torch.testing.assert_close(after["1"]["lambda_max"], expected, rtol=1e-7, atol=0)
    assert after["1"]["lambda_max"] < before["1"]["lambda_max"] / 20
    assert after["3"]["lambda_max"] > before["3"]["lambda_max"] * 20
    torch.testing.assert_close(after["kappa_sum"], before["kappa_sum"], rtol=1e-7, atol=0)


def test_neuronwise_reparameterisation_invariance() -> None:
    torch.manual_seed(7)
    model = mlp(6, 3, hidden=(8, 7)).double()
    x, y = data(40, (6,), 3)
    scales = 5 + 20 * torch.rand(8, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    moved = rescaled_neuronwise(model, 1, scales)
    torch.testing.assert_close(moved(x), model(x))
    before, after = relative_flatness(model, x, y), relative_flatness(moved, x, y)
    for name in ("1", "3", "5"):
        torch.testing.assert_close(after[name]["rho"], before[name]["rho"], rtol=1e-8, atol=1e-14)
    assert not torch.allclose(after["1"]["kappa"], before["1"]["kappa"], rtol=1e-2)


class ThreadAllReduce:
    """A SUM all-reduce between threads, standing in for torch.distributed ranks."""

    def __init__(self, world: int) -> None:
        self.barrier = threading.Barrier(world)
        self.slots: list[Tensor | None] = [None] * world

    def on_rank(self, rank: int) -> Callable[[Tensor], Tensor]:
        def reduce(t: Tensor) -> Tensor:
            self.slots[rank] = t.clone()
            self.barrier.wait()
            total = torch.stack([s for s in self.slots if s is not None]).sum(0)
            self.barrier.wait()
            return total

        return reduce


def test_reduce_hook_matches_one_process_on_the_union_of_shards() -> None:
    torch.manual_seed(9)
    tanh = nn.Sequential(nn.Linear(6, 9), nn.Tanh(), nn.Linear(9, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    x, y = data(30, (6,), 3)
    shards = [[(x[:10], y[:10]), (x[10:17], y[10:17])], [(x[17:], y[17:])]]  # ranks with 17 and 13 samples

    def run(batches: Batches, reduce: Callable[[Tensor], Tensor] | None, model: nn.Module) -> dict:
        gen = torch.Generator().manual_seed(3)  # the same seed on every rank
        return relative_flatness(model, batches, trace_budget=30, generator=gen, reduce=reduce)

    single = run(shards[0] + shards[1], None, tanh)
    comm, results = ThreadAllReduce(2), [None, None]

    def rank(r: int) -> None:
        results[r] = run(shards[r], comm.on_rank(r), copy.deepcopy(tanh))

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(r is not None for r in results)
    for name in ("0", "2", "4"):
        assert single[name]["trace_method"] == results[0][name]["trace_method"]
        for key in ("lambda_max", "trace", "rho", "kappa"):
            for res in results:
                torch.testing.assert_close(res[name][key], single[name][key], rtol=1e-9, atol=1e-13)


def test_no_side_effects_and_inference_mode() -> None:
    model = bn_cnn()
    model[1].eval()  # a submodule in its own mode must keep it
    x, y = data(12, (1, 6, 6), 3)
    for p in model[0].parameters():
        p.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    rng = torch.get_rng_state()
    with torch.inference_mode():
        xi, yi = x.clone(), y.clone()
        got = relative_flatness(model, xi, yi, layers=["0", "8"])
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert model.training and not model[1].training and model[4].training
    again = relative_flatness(model, x, y, layers=["0", "8"])
    for name in ("0", "8"):
        assert torch.equal(got[name]["lambda_max"], again[name]["lambda_max"])
        assert not got[name]["kappa"].requires_grad


def test_bad_input() -> None:
    model = relu_mlp()
    x, y = data(8, (5,), 3)
    with pytest.raises(ValueError, match="needs labels"):
        relative_flatness(model, x, None)
    with pytest.raises(ValueError, match="needs labels"):
        relative_flatness(model, [(x, y), (x,)])
    with pytest.raises(ValueError, match="needs labels"):
        relative_flatness(model, [x])
    with pytest.raises(ValueError, match="empty probe"):
        relative_flatness(model, [])
    with pytest.raises(ValueError, match="not Linear/Conv layers"):
        relative_flatness(model, x, y, layers=["2"])
    with pytest.raises(ValueError, match="trace_budget"):
        relative_flatness(model, x, y, trace_budget=3)
    with torch.no_grad():
        model[3].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        relative_flatness(model, x, y)
