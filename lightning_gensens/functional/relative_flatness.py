"""Relative flatness of Petzka et al., "Relative Flatness and Generalization" (Table 1, Theorems 2 and 3).

For each weight layer l with weight W_l (bias excluded) and H_l the Hessian of the mean empirical loss with
respect to W_l alone:

- κ^l = ‖W_l‖²_F · λ_max(H_l) and κ^l_τ = ‖W_l‖²_F · Tr(H_l), invariant to layer-wise rescaling (Thm 2);
- ρ^l(j) = w_l(j)ᵀ H_jj w_l(j), w_l(j) the incoming weights of neuron (output channel) j and H_jj its diagonal
  block of H_l, invariant to neuron-wise rescaling (Thm 3); ρ^l = max_j ρ^l(j), ρ^l_σ = Σ_j ρ^l(j);
- network-wise κ_max, κ_Σ (and κ_τ, ρ analogues) over the layers measured.

H_l is never formed. The gradient graph of each probe batch is built once and reused for every Hessian-vector
product (double backward). λ_max: Lanczos with full reorthogonalisation. Tr(H_l) and ρ: for a
Linear layer whose Hessian block equals its Gauss–Newton block Σ_n J_nᵀ Λ_n J_n (ReLU/max-pool networks, and
the last layer of any network; checked numerically with one HVP) in closed form from one forward and K
vector–Jacobian products; otherwise Tr by Hutch++ (exact on the unit basis for layers of at most
``trace_budget`` weights) and ρ by one HVP per neuron (exact).

Distributed probes: pass ``reduce``, a SUM over ranks (e.g. ``torch.distributed.all_reduce`` returning its
argument). Every local sum — the sample count, each Hessian-vector product Σ_{n∈rank} ∇²ℓ_n·v, the
Gauss–Newton trace and ρ sums — goes through it before the division by the global count N, so rank r
contributes (n_r/N)·H_r·v. With the same ``generator`` seed on every rank, every rank then runs the same
Lanczos / Hutch++ iterations on the same global products and returns the same result.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_gensens.functional._curvature import (
    ProbeHessian,
    Reduce,
    lanczos_max,
    neuron_flatness,
    normal_draw,
    trace_estimate,
)
from lightning_gensens.functional.input_gradient_norm import LossFn
from lightning_gensens.utilities import check_finite_parameters, evaluation_mode, weight_layers


def _identity(t: Tensor) -> Tensor:
    return t


def relative_flatness(
    model: nn.Module,
    x: Tensor | Iterable[Sequence[Tensor]],
    y: Tensor | None = None,
    layers: Sequence[str] | None = None,
    loss_fn: LossFn | None = None,
    *,
    lanczos_tol: float = 1e-3,
    lanczos_max_iter: int = 100,
    trace_budget: int = 99,
    trace_rtol: float = 1e-2,
    gauss_newton: bool = True,
    generator: torch.Generator | None = None,
    reduce: Reduce | None = None,
) -> dict[str, Any]:
    """Relative flatness κ^l, κ^l_τ, ρ^l of each layer and κ_max, κ_Σ of the network (Petzka et al., Table 1).

    Args:
        model: the network; evaluated in eval mode (every submodule's mode is restored afterwards).
        x, y: the probe as one batch, or ``x`` an iterable of ``(x, y)`` batches and ``y`` None. The Hessian
            is that of the mean loss over all samples (batches weighted by their size).
        layers: names from ``model.named_modules()`` of Linear/Conv layers; default all of them.
        loss_fn: ``loss_fn(output, target)`` returning the batch *mean*; default cross-entropy on logits.
        lanczos_tol, lanczos_max_iter: stop Lanczos at Ritz residual ≤ tol·λ_max, or after that many HVPs.
        trace_budget, trace_rtol: Hutch++ budget of HVPs and target relative standard error (unused when the
            Gauss–Newton closed form applies; layers of at most ``trace_budget`` weights are traced exactly).
        gauss_newton: use the exact closed forms for Linear layers where H_l equals its Gauss–Newton block.
        generator: source of the random probes (default: a private generator seeded 0; the global RNG is
            never used). Use the same seed on every rank.
        reduce: SUM over ranks of the local statistics (module docstring); default: single process.

    Returns:
        ``{layer_name: {...}, "kappa_max", "kappa_sum", "kappa_tau_max", "kappa_tau_sum", "rho_max",
        "rho_sum"}``;
        per layer 0-dim tensors ``kappa``, ``kappa_tau``, ``lambda_max``, ``lambda_max_error`` (Ritz residual:
        an eigenvalue lies within it of ``lambda_max``), ``trace``, ``trace_stderr`` (0 when exact),
        ``weight_norm_sq``, ``rho_max``, ``rho_sum``, ``rho`` (``Tensor[n_out]``), and ``lanczos_iters``,
        ``trace_hvps`` (ints), ``trace_method`` (``"gauss-newton"``, ``"basis"`` or ``"hutch++"``).
        Network-wise entries (Table 1): κ_max = max_l κ^l, κ_Σ = Σ_l κ^l, likewise for κ_τ, and
        ρ_max = max_l ρ^l, ρ_Σ = Σ_l ρ^l_σ, over the layers measured.
    """
    if trace_budget < 6:
        raise ValueError(f"trace_budget must be at least 6 Hessian-vector products, got {trace_budget}.")
    check_finite_parameters(model)
    available = dict(weight_layers(model))
    names = list(available) if layers is None else [layers] if isinstance(layers, str) else list(layers)
    unknown = [n for n in names if n not in available]
    if unknown or not names:
        raise ValueError(
            f"relative_flatness: layers {unknown or names} are not Linear/Conv layers of "
            f"{type(model).__name__}; choose from {list(available)}."
        )
    batches = [(x, y)] if isinstance(x, Tensor) else x
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    with torch.inference_mode(False), torch.enable_grad(), evaluation_mode(model):
        probe = ProbeHessian(model, batches, names, loss_fn or F.cross_entropy, reduce or _identity, gauss_newton)
        result: dict[str, Any] = {
            n: _layer_flatness(probe, n, lanczos_tol, lanczos_max_iter, trace_budget, trace_rtol, gen) for n in names
        }

    def stacked(stat: str) -> Tensor:
        return torch.stack([result[n][stat] for n in names])

    result.update(
        kappa_max=stacked("kappa").max(),
        kappa_sum=stacked("kappa").sum(),
        kappa_tau_max=stacked("kappa_tau").max(),
        kappa_tau_sum=stacked("kappa_tau").sum(),
        rho_max=stacked("rho_max").max(),
        rho_sum=stacked("rho_sum").sum(),
    )
    return result


def _layer_flatness(
    probe: ProbeHessian,
    name: str,
    lanczos_tol: float,
    lanczos_max_iter: int,
    trace_budget: int,
    trace_rtol: float,
    generator: torch.Generator,
) -> dict[str, Any]:
    """κ, κ_τ, λ_max, Tr and ρ of one layer (Petzka et al., Table 1)."""
    weight = probe.leaves[name].detach()
    dim = weight.numel()

    def matmat(v: Tensor) -> Tensor:
        return probe.hvp(name, v)

    def matvec(v: Tensor) -> Tensor:
        return probe.hvp(name, v[None])[0]

    q0 = normal_draw((dim,), generator, weight)
    q0 = q0 / q0.norm()
    hq0 = matvec(q0)  # the first Lanczos product doubles as the Gauss–Newton check
    exact = name in probe.gn and probe.gauss_newton_holds(name, q0, hq0)
    lam, lam_err, iters = lanczos_max(matvec, q0, hq0, lanczos_tol, lanczos_max_iter)
    if exact:
        trace, rho = probe.gauss_newton_trace_rho(name)
        stderr, hvps, method = weight.new_zeros(()), 0, "gauss-newton"
    else:
        trace, stderr, hvps, method = trace_estimate(matmat, dim, weight, trace_budget, trace_rtol, generator)
        rho = neuron_flatness(matmat, weight)
    norm_sq = weight.square().sum()
    lam_t = weight.new_tensor(lam)
    return {
        "kappa": norm_sq * lam_t,
        "kappa_tau": norm_sq * trace,
        "lambda_max": lam_t,
        "lambda_max_error": weight.new_tensor(lam_err),
        "lanczos_iters": iters,
        "trace": trace,
        "trace_stderr": stderr,
        "trace_hvps": hvps,
        "trace_method": method,
        "weight_norm_sq": norm_sq,
        "rho": rho,
        "rho_max": rho.max(),
        "rho_sum": rho.sum(),
    }
