"""Layer curvature: λ_max(H_l) and Tr(H_l) by ``relative_flatness``, by the dense Hessian and by PyHessian.

Run: ``python benchmarks/curvature.py [--width 50] [--probe 0] [--epochs 30] [--repeats 7] [--threads 1]``.

Model and data: the papers' MLP with 4 hidden ReLU layers (``--width`` units each; 100 in the papers, whose
dense 10,000 × 10,000 layer Hessians take minutes each to form and diagonalise on a laptop CPU, hence the
default 50) trained with SGD on scikit-learn's digits (z-scored with training statistics). The
probe is the first ``--probe`` training samples (0: all 1,347) as ONE batch, so every method reuses one
gradient graph.

Rows, all on the same float32 model and probe:
- dense: H_l formed row by row from double-backward HVPs on the unit basis of a float64 copy (what
  ``torch.autograd.functional.hessian`` computes), then ``eigvalsh`` and the diagonal: the reference.
- ours: ``relative_flatness(model, x, y, layers=...)`` (Lanczos; Tr exact via the Gauss–Newton identity
  for these ReLU Linear layers); "ours-hutch++" forces the estimator path (``gauss_newton=False``, which
  also computes ρ by one HVP per neuron). Times include everything the call returns (κ, κ_τ, ρ as well).
- PyHessian 0.1 (``pip install pyhessian``): power iteration for λ_max and Hutchinson for Tr, both stopping
  on a relative change below 1e-3 (its defaults). PyHessian works on every parameter that requires grad, so it
  is restricted to one layer by setting ``requires_grad=False`` on all other parameters while it runs: its
  Hessian is then exactly our H_l (bias excluded).

"hvps" counts Hessian-vector products (ours: Lanczos + trace + ρ; the Gauss–Newton path adds K = 10 batched
vector–Jacobian products, about one backward pass). Times are seconds of wall clock, the best of
``--repeats`` interleaved runs (the dense reference runs once); "all layers" is one ``relative_flatness`` call
for every layer against one PyHessian run per layer. Errors are those of the last repeat. The machine's load
average is printed: on a shared machine the HVP counts are the load-independent cost measure.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from _common import add_arguments, machine, timed
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor, nn

from lightning_gensens.functional.relative_flatness import relative_flatness
from lightning_gensens.models import mlp

Estimate = dict[str, tuple[float, float, int]]
"""Per layer: (λ_max, Tr, Hessian-vector products)."""


def train_digits(width: int, epochs: int) -> tuple[nn.Module, Tensor, Tensor]:
    """Train the 4-hidden-layer MLP on z-scored digits (SGD lr 0.05, wd 5e-4, batch 64); return it, X, y."""
    data = load_digits()
    x_tr, _, y_tr, _ = train_test_split(data.data, data.target, test_size=0.25, random_state=0)
    x = torch.tensor(x_tr, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-6)
    y = torch.tensor(y_tr)
    torch.manual_seed(0)
    model = mlp(64, 10, hidden=(width,) * 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, weight_decay=5e-4)
    for _ in range(epochs):
        for idx in torch.randperm(len(y)).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        print(f"trained {epochs} epochs: train loss {F.cross_entropy(model(x), y).item():.3f}")
    return model, x, y


def dense_layer(model: nn.Module, x: Tensor, y: Tensor, name: str) -> tuple[float, float]:
    """λ_max and Tr of the dense float64 H_l from HVPs on the unit basis."""
    model64 = mlp(64, 10, hidden=[m.out_features for m in model.modules() if isinstance(m, nn.Linear)][:-1]).double()
    model64.load_state_dict(model.state_dict())
    model64.eval()
    weight = dict(model64.named_modules())[name].weight
    (grad,) = torch.autograd.grad(F.cross_entropy(model64(x.double()), y), weight, create_graph=True)
    dim = weight.numel()
    rows = []
    for chunk in torch.eye(dim, dtype=torch.float64).split(128):
        (hv,) = torch.autograd.grad(
            grad, weight, chunk.view(-1, *weight.shape), retain_graph=True, is_grads_batched=True
        )
        rows.append(hv.reshape(chunk.shape[0], dim))
    hessian = torch.cat(rows)
    hessian = (hessian + hessian.T) / 2
    lam = torch.linalg.eigvalsh(hessian)[-1].item()
    return lam, hessian.trace().item()


def ours(model: nn.Module, x: Tensor, y: Tensor, names: list[str], gauss_newton: bool) -> tuple[Estimate, float]:
    result, seconds = timed(lambda: relative_flatness(model, x, y, layers=names, gauss_newton=gauss_newton))
    est = {}
    for n in names:
        r = result[n]
        rho_hvps = 0 if r["trace_method"] == "gauss-newton" else len(r["rho"])
        hvps = r["lanczos_iters"] + r["trace_hvps"] + rho_hvps
        est[n] = (r["lambda_max"].item(), r["trace"].item(), hvps)
    return est, seconds


def pyhessian(model: nn.Module, x: Tensor, y: Tensor, names: list[str]) -> tuple[Estimate, dict[str, float]]:
    """PyHessian's top eigenvalue and Hutchinson trace of each H_l (other parameters frozen), and seconds."""
    module: Any = importlib.import_module("pyhessian.hessian")
    hvp = module.hessian_vector_product
    calls = [0]

    def counted(*args: Any) -> Any:
        calls[0] += 1
        return hvp(*args)

    module.hessian_vector_product = counted
    est, seconds = {}, {}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for n in names:
            weight = dict(model.named_modules())[n].weight
            for p in model.parameters():
                p.requires_grad_(p is weight)
            torch.manual_seed(0)
            calls[0] = 0

            def run() -> tuple[float, float]:
                h = module.hessian(model, nn.CrossEntropyLoss(), data=(x, y), cuda=False)
                lam = h.eigenvalues()[0][0]
                samples = h.trace()
                return float(lam), float(sum(samples) / len(samples))

            (lam, trace), seconds[n] = timed(run)
            est[n] = (lam, trace, calls[0])
            model.zero_grad(set_to_none=True)
    finally:
        module.hessian_vector_product = hvp
        for p, flag in flags:
            p.requires_grad_(flag)
    return est, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=50)
    parser.add_argument("--probe", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=7)
    add_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, x, y = train_digits(args.width, args.epochs)
    if args.probe:
        x, y = x[: args.probe], y[: args.probe]
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    last_hidden = names[-2]
    has_pyhessian = importlib.util.find_spec("pyhessian") is not None
    if not has_pyhessian:
        print("PyHessian is not installed (`pip install pyhessian`): its rows are skipped.")
    print(f"probe {len(y)} samples, layers {names} (last hidden: {last_hidden}); {machine()}\n")

    dense = {n: timed(partial(dense_layer, model, x, y, n)) for n in names}
    estimates: dict[str, Estimate] = {}
    runs: dict[str, dict[str, list[float]]] = {}
    for _ in range(args.repeats):  # interleaved; the best time of each method is reported
        for label, gn in (("ours", True), ("ours-hutch++", False)):
            _, t_single = ours(model, x, y, [last_hidden], gn)
            estimates[label], t_all = ours(model, x, y, names, gn)
            runs.setdefault(label, {"last hidden": [], "all layers": []})
            runs[label]["last hidden"].append(t_single)
            runs[label]["all layers"].append(t_all)
        if has_pyhessian:
            estimates["pyhessian"], seconds = pyhessian(model, x, y, names)
            runs.setdefault("pyhessian", {"last hidden": [], "all layers": []})
            runs["pyhessian"]["last hidden"].append(seconds[last_hidden])
            runs["pyhessian"]["all layers"].append(sum(seconds.values()))
    times = {label: {k: min(v) for k, v in r.items()} for label, r in runs.items()}
    times["dense"] = {"last hidden": dense[last_hidden][1], "all layers": sum(t for _, t in dense.values())}

    print(
        f"{'layer':>6} {'size':>6} {'method':>13} {'lambda_max':>11} {'rel.err':>9} {'trace':>11} "
        f"{'rel.err':>9} {'hvps':>5}"
    )
    for n in names:
        (lam_ref, tr_ref), _ = dense[n]
        size = dict(model.named_modules())[n].weight.numel()
        print(f"{n:>6} {size:>6} {'dense':>13} {lam_ref:11.5g} {'':>9} {tr_ref:11.5g} {'':>9} {size:>5}")
        for label, values in estimates.items():
            lam, tr, hvps = values[n]
            print(
                f"{'':>6} {'':>6} {label:>13} {lam:11.5g} {abs(lam - lam_ref) / abs(lam_ref):9.2e} "
                f"{tr:11.5g} {abs(tr - tr_ref) / abs(tr_ref):9.2e} {hvps:>5}"
            )
    print(f"\n{'seconds':>13} {'last hidden':>12} {'all layers':>11}")
    for label, t in times.items():
        print(f"{label:>13} {t['last hidden']:12.4f} {t['all layers']:11.4f}")
    if has_pyhessian:
        for label in ("ours", "ours-hutch++"):
            ratio = {k: times[label][k] / times["pyhessian"][k] for k in times[label]}
            print(
                f"time {label} / pyhessian: last hidden {ratio['last hidden']:.2f}, "
                f"all layers {ratio['all layers']:.2f}"
            )


if __name__ == "__main__":
    main()
