"""Time per 256 samples of the tangent sample sensitivity T(x) = Σ_o ‖∂²f_o/∂θ∂x‖²_F.

Three ways, on the papers' 3072-100-100-100-100-10 ReLU MLP and on a small BatchNorm CNN (eval mode) with
CIFAR-shaped random inputs:
  exact       the closed form Σ_i ‖L_i‖²_F·‖R_i‖²_F (MLP only), on all 256 samples;
  dense       every entry of the din × Nθ × dout mixed derivative by autograd (jvp over each input direction of
              the per-output parameter gradients), timed on ``--dense-samples`` samples and extrapolated to 256;
  hutchinson  the unbiased estimator with the number of probes that gives a 5% relative standard error for the
              worst of the 256 samples (found from an 8-probe pilot), on all 256 samples.

    python benchmarks/tangent.py [--dense-samples 1] [--threads 1]
"""

from __future__ import annotations

import argparse
import math

import torch
from _common import add_arguments, machine, median_time, timed
from torch import Tensor, nn
from torch.func import functional_call, jacrev, jvp, vmap

from lightning_gensens.functional.tangent_sensitivity import (
    tangent_sample_sensitivity,
    tangent_sensitivity_hutchinson,
)
from lightning_gensens.models import mlp, small_cnn

BATCH = 256
TARGET_RELATIVE_ERROR = 0.05


def dense_tangent(model: nn.Module, x: Tensor, chunk: int = 64) -> Tensor:
    """Σ_o ‖∂²f_o/∂θ∂x‖²_F per sample from all din·Nθ·dout mixed partials (forward-over-reverse autograd)."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def param_jacobian(xx: Tensor) -> dict[str, Tensor]:
        return jacrev(lambda p: functional_call(model, p, (xx[None],))[0])(params)

    out = []
    with torch.no_grad():
        for xn in x:
            basis = torch.eye(xn.numel(), dtype=xn.dtype).reshape(-1, *xn.shape)
            total = torch.zeros((), dtype=torch.float64)
            for directions in basis.split(chunk):
                mixed = vmap(lambda v, xn=xn: jvp(param_jacobian, (xn,), (v,))[1])(directions)
                total += sum(torch.linalg.vector_norm(m, dtype=torch.float64).square() for m in mixed.values())
            out.append(total)
    return torch.stack(out)


def bn_cnn() -> nn.Sequential:
    net = small_cnn(in_channels=3, side=32, width=16)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None  # tracked by default
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def bench(name: str, model: nn.Module, x: Tensor, dense_samples: int) -> None:
    n_params = sum(p.numel() for p in model.parameters())
    print(f"\n{name}: {n_params:,} parameters, input {tuple(x.shape[1:])}, {BATCH} samples")
    exact_time = None
    if name.startswith("mlp"):
        exact, exact_time = median_time(lambda: tangent_sample_sensitivity(model, x, method="exact"), repeats=5)
        print(f"  exact closed form     {exact_time * 1e3:10.1f} ms / 256 samples")

    dense, seconds = timed(lambda: dense_tangent(model, x[:dense_samples]))
    dense_time = seconds * BATCH / dense_samples
    print(
        f"  dense autograd        {dense_time:10.1f} s  / 256 samples (timed on {dense_samples} sample(s), "
        f"extrapolated x{BATCH // dense_samples})"
    )
    if exact_time is not None:
        err = float(((exact[:dense_samples].double() - dense) / dense).abs().max())
        print(f"    exact vs dense on those samples: max relative difference {err:.1e} (float32)")
        print(f"    exact is {dense_time / exact_time:,.0f}x faster than dense")

    generator = torch.Generator().manual_seed(0)
    _, pilot_se = tangent_sensitivity_hutchinson(model, x, n_probes=8, generator=generator)
    pilot, _ = tangent_sensitivity_hutchinson(model, x, n_probes=8, generator=generator)
    per_probe = float((pilot_se * math.sqrt(8) / pilot).max())
    probes = max(2, math.ceil((per_probe / TARGET_RELATIVE_ERROR) ** 2))
    (est, se), hutch_time = median_time(
        lambda: tangent_sensitivity_hutchinson(model, x, n_probes=probes, generator=generator), repeats=3
    )
    print(
        f"  hutchinson            {hutch_time * 1e3:10.1f} ms / 256 samples ({probes} probe(s); worst per-probe "
        f"relative sd {per_probe:.3f}; achieved relative SE max {float((se / est).max()):.3f})"
    )
    reference = exact.double() if exact_time is not None else None
    if reference is not None:
        err = ((est.double() - reference) / reference).abs()
        print(f"    vs exact: relative error median {float(err.median()):.3f}, max {float(err.max()):.3f}")
    else:
        err = ((est[:dense_samples].double() - dense) / dense).abs()
        print(f"    vs dense on {dense_samples} sample(s): max relative error {float(err.max()):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dense-samples", type=int, default=1)
    add_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{machine()}; float32")
    torch.manual_seed(0)
    bench("mlp 3072-100-100-100-100-10", mlp(3072).eval(), torch.randn(BATCH, 3072), args.dense_samples)
    bench("small_cnn 3x32x32 (2 conv + BatchNorm, eval)", bn_cnn(), torch.randn(BATCH, 3, 32, 32), args.dense_samples)


if __name__ == "__main__":
    main()
