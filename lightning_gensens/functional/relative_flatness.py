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

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from lightning_gensens.functional.input_gradient_norm import LossFn
from lightning_gensens.utilities import check_finite_parameters, check_labels, evaluation_mode, weight_layers

Reduce = Callable[[Tensor], Tensor]
"""Sum of a tensor over ranks (identity on one process); called identically on every rank."""

_HVP_CHUNK = 32
"""Hessian-vector products evaluated together by one vmapped backward pass."""

_PROBE_CHUNK = 4
"""Hutch++ residual probes drawn between two standard-error checks."""

_GN_MAX_ELEMENTS = 2**26
"""Largest B·K·(K + n_out) of one batch's Gauss–Newton factors; beyond it a layer uses the estimators."""


def _identity(t: Tensor) -> Tensor:
    return t


class _ProbeHessian:
    """Layer Hessians of the probe's mean loss (1/N) Σ_n ℓ_n, as cached double-backward graphs per batch.

    Also keeps, for each Linear layer that is called once on 2-D inputs of a model with 2-D output, the
    Gauss–Newton factors of every batch: the layer inputs φ_n, G_n = ∂f(x_n)/∂h_n (K × out, h = layer output)
    and Λ_n G_n with Λ_n = ∂²ℓ_n/∂f² (K × K); the layer's Jacobian is J_n = G_n ⊗ φ_nᵀ.
    """

    def __init__(
        self,
        model: nn.Module,
        batches: Iterable[Any],
        names: Sequence[str],
        loss_fn: LossFn,
        reduce: Reduce,
        gauss_newton: bool,
    ) -> None:
        modules = dict(model.named_modules())
        self.leaves = {n: modules[n].weight.detach().requires_grad_(True) for n in names}
        self.params = {f"{n}.weight" if n else "weight": leaf for n, leaf in self.leaves.items()}
        self.reduce = reduce
        self.grads: list[dict[str, Tensor]] = []
        linear = [n for n in names if gauss_newton and isinstance(modules[n], nn.Linear)]
        self.gn: dict[str, list[tuple[Tensor, Tensor, Tensor]]] = {n: [] for n in linear}
        count = 0
        for batch in batches:
            count += self._add_batch(model, modules, batch, loss_fn)
        if count == 0:
            raise ValueError("relative_flatness got an empty probe: pass at least one (x, y) batch.")
        ref = next(iter(self.leaves.values()))
        self.count = reduce(torch.tensor(float(count), dtype=ref.dtype, device=ref.device))
        if linear:  # a layer keeps the closed forms only if it qualified on every rank
            dropped = reduce(torch.tensor([float(n not in self.gn) for n in linear], device=ref.device))
            self.gn = {n: self.gn[n] for n, d in zip(linear, dropped.tolist(), strict=True) if d == 0}

    def _add_batch(self, model: nn.Module, modules: dict[str, nn.Module], batch: Any, loss_fn: LossFn) -> int:
        if isinstance(batch, Tensor):  # an unlabeled batch
            batch = (batch,)
        y = check_labels(batch[1] if len(batch) > 1 else None, "relative_flatness").clone()
        x = batch[0].clone()
        calls: dict[str, list[tuple[Tensor, Tensor]]] = {n: [] for n in self.gn}

        def capture(name: str) -> Callable[..., Tensor]:
            def hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> Tensor:
                # ∂f/∂delta = G = ∂f/∂h, also when an in-place ReLU later overwrites the layer output
                delta = torch.zeros_like(output, requires_grad=True)
                calls[name].append((args[0].detach(), delta))
                return output + delta

            return hook

        handles = [modules[n].register_forward_hook(capture(n)) for n in self.gn]
        try:
            out = functional_call(model, self.params, (x,))
        finally:
            for h in handles:
                h.remove()
        n_b = y.shape[0]
        total = loss_fn(out, y) * n_b
        grads = torch.autograd.grad(
            total, list(self.leaves.values()), create_graph=True, allow_unused=True, materialize_grads=True
        )
        self.grads.append(dict(zip(self.leaves, grads, strict=True)))
        k = out.shape[-1]
        eligible = [
            n
            for n, c in calls.items()
            if len(c) == 1
            and c[0][0].dim() == 2
            and out.dim() == 2
            and n_b * k * (k + c[0][1].shape[1]) <= _GN_MAX_ELEMENTS
        ]
        for n in set(self.gn) - set(eligible):
            del self.gn[n]
        if eligible:
            onehots = torch.eye(k, dtype=out.dtype, device=out.device).unsqueeze(1).expand(k, n_b, k)
            jacs = torch.autograd.grad(
                out, [calls[n][0][1] for n in eligible], onehots, retain_graph=True, is_grads_batched=True
            )
            lam = _logit_hessians(out.detach(), y, loss_fn)
            for n, jac in zip(eligible, jacs, strict=True):
                jac = jac.transpose(0, 1)
                self.gn[n].append((calls[n][0][0], jac, torch.bmm(lam, jac)))
        return n_b

    def hvp(self, name: str, v: Tensor) -> Tensor:
        """H_l·v for a block of flattened vectors ``v`` (m × P), chunked, reduced over ranks."""
        leaf = self.leaves[name]
        out = torch.zeros_like(v)
        for start in range(0, v.shape[0], _HVP_CHUNK):
            chunk = v[start : start + _HVP_CHUNK].reshape(-1, *leaf.shape)
            batched = chunk.shape[0] > 1  # a vmapped backward costs more for a single vector
            vectors = chunk if batched else chunk[0]
            for grads in self.grads:
                if not grads[name].requires_grad:
                    continue
                (hv,) = torch.autograd.grad(
                    grads[name], leaf, vectors, retain_graph=True, allow_unused=True, is_grads_batched=batched
                )
                if hv is not None:
                    out[start : start + _HVP_CHUNK] += hv.reshape(chunk.shape[0], -1)
        return self.reduce(out) / self.count

    def gauss_newton_holds(self, name: str, v: Tensor, hv: Tensor) -> bool:
        """Check H_l·v = GN_l·v for a random v, given H_l·v: true when the network is piecewise linear in W_l.

        The tolerance is √ε of the dtype relative to ‖H_l·v‖; any curvature of f in W_l (tanh, GELU,
        LayerNorm, weight reuse, a loss coupling samples) breaks the equality by far more.
        """
        v, hv = v.reshape(self.leaves[name].shape), hv.reshape(self.leaves[name].shape)
        gnv = torch.zeros_like(v)
        for phi, jac, lam_jac in self.gn[name]:  # GN·v = Σ_n (Λ_n G_n)ᵀ G_n V φ_n φ_nᵀ
            jv = torch.bmm(jac, (phi @ v.T).unsqueeze(-1))
            gnv += torch.bmm(lam_jac.transpose(1, 2), jv).squeeze(-1).T @ phi
        gnv = self.reduce(gnv) / self.count
        scale = torch.maximum(hv.norm(), gnv.norm())
        return bool((hv - gnv).norm() <= torch.finfo(v.dtype).eps ** 0.5 * scale)

    def gauss_newton_trace_rho(self, name: str) -> tuple[Tensor, Tensor]:
        """Exact Tr(GN_l) = (1/N) Σ_n ‖φ_n‖² Σ_j c_nj and ρ(j) = (1/N) Σ_n c_nj (w_j·φ_n)².

        Here c_nj = G_n[:, j]ᵀ Λ_n G_n[:, j]; both follow from J_n = G_n ⊗ φ_nᵀ.
        """
        w = self.leaves[name].detach()
        stats = w.new_zeros(1 + w.shape[0])
        for phi, jac, lam_jac in self.gn[name]:
            c = (jac * lam_jac).sum(1)
            stats[0] += (phi.square().sum(1) * c.sum(1)).sum()
            stats[1:] += (c * (phi @ w.T).square()).sum(0)
        stats = self.reduce(stats) / self.count
        return stats[0], stats[1:]


def _logit_hessians(out: Tensor, y: Tensor, loss_fn: LossFn) -> Tensor:
    """Λ_n = ∂²ℓ_n/∂f² of every sample (B × K × K), for a loss that sums over samples.

    Cross-entropy: diag(p) − ppᵀ, p = softmax(f). Other losses: K double-backward passes of the summed loss
    (a loss that couples samples makes the Gauss–Newton check fail, so it is never used wrongly).
    """
    if loss_fn is F.cross_entropy:
        p = out.softmax(1)
        return torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
    logits = out.requires_grad_(True)
    (g,) = torch.autograd.grad(loss_fn(logits, y) * y.shape[0], logits, create_graph=True)
    if not g.requires_grad:
        return logits.new_zeros(*logits.shape, logits.shape[1])
    columns = [
        torch.autograd.grad(g[:, k].sum(), logits, retain_graph=True, allow_unused=True, materialize_grads=True)[0]
        for k in range(logits.shape[1])
    ]
    return torch.stack(columns, 2)


def _randn(shape: Sequence[int] | torch.Size, generator: torch.Generator, like: Tensor) -> Tensor:
    """Standard normal draw from a private generator, returned with the dtype and device of ``like``."""
    return torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=like.dtype).to(like.device)


def _lanczos_max(
    matvec: Callable[[Tensor], Tensor], q0: Tensor, hq0: Tensor, tol: float, max_iter: int
) -> tuple[float, float, int]:
    """Largest eigenvalue by Lanczos with full reorthogonalisation from the unit vector q0, given hq0 = H q0.

    Stops once the Ritz residual ‖H y − θ y‖ = β_j |s_j| is at most ``tol``·|θ| (then some eigenvalue lies
    within that residual of θ), or on an invariant subspace. Returns (θ, residual, iterations).
    """
    basis: list[Tensor] = []
    alphas: list[float] = []
    betas: list[float] = []
    q, w = q0, hq0
    theta = resid = 0.0
    for _ in range(min(max_iter, q0.numel())):
        basis.append(q)
        w = w if len(basis) == 1 else matvec(q)
        alphas.append(float(q @ w))
        qs = torch.stack(basis)
        for _ in range(2):  # classical Gram–Schmidt, twice
            w = w - (qs @ w) @ qs
        beta = float(w.norm())
        t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            t = t + torch.diag(off, 1) + torch.diag(off, -1)
        evals, evecs = torch.linalg.eigh(t)
        theta, resid = float(evals[-1]), beta * abs(float(evecs[-1, -1]))
        if resid <= tol * abs(theta) or beta <= torch.finfo(w.dtype).eps * float(evals.abs().max()):
            return theta, resid, len(basis)
        betas.append(beta)
        q = w / beta
    if len(basis) < q0.numel():
        warnings.warn(
            f"Lanczos stopped after {max_iter} iterations at residual {resid:.3g} (tolerance "
            f"{tol:.3g}·|λ_max|); raise lanczos_max_iter for a tighter λ_max.",
            stacklevel=3,
        )
    return theta, resid, len(basis)


def _trace_estimate(
    matmat: Callable[[Tensor], Tensor], dim: int, like: Tensor, budget: int, rtol: float, generator: torch.Generator
) -> tuple[Tensor, Tensor, int, str]:
    """Tr(H) from products with H: exact on the unit basis when ``dim`` ≤ ``budget``, else Hutch++.

    Hutch++ (Meyer et al. 2021): Q = orth(H S) for a Gaussian sketch S of budget//3 columns, Tr(QᵀHQ) exactly,
    plus a Hutchinson estimate of Tr((I−QQᵀ)H(I−QQᵀ)) with Rademacher probes drawn until its standard error is
    at most ``rtol``·|trace| or the budget of products is spent. Returns (trace, stderr, products, method).
    """
    if dim <= budget:
        eye = torch.eye(dim, dtype=like.dtype, device=like.device)
        diag = torch.cat([(e * matmat(e)).sum(1) for e in eye.split(_HVP_CHUNK)])
        return diag.sum(), like.new_zeros(()), dim, "basis"
    k = budget // 3
    q = torch.linalg.qr(matmat(_randn((k, dim), generator, like)).T).Q.T
    top = (q * matmat(q)).sum()
    samples = like.new_zeros(0)
    used = 2 * k
    estimate, stderr = top, like.new_zeros(())
    while used < budget:
        m = min(_PROBE_CHUNK, budget - used)
        g = torch.randint(0, 2, (m, dim), generator=generator, device=generator.device).to(like) * 2 - 1
        z = g - (g @ q.T) @ q
        samples = torch.cat([samples, (z * matmat(z)).sum(1)])
        used += m
        if samples.numel() >= 2:
            estimate = top + samples.mean()
            stderr = samples.std() / math.sqrt(samples.numel())
            if stderr <= rtol * estimate.abs():
                break
    return estimate, stderr, used, "hutch++"


def _neuron_flatness(matmat: Callable[[Tensor], Tensor], weight: Tensor) -> Tensor:
    """ρ(j) = w(j)ᵀ H_jj w(j) exactly, one HVP per neuron: ⟨V_j, H V_j⟩ with V_j = W masked to row j."""
    w = weight.reshape(weight.shape[0], -1)
    rho = w.new_empty(w.shape[0])
    for rows in torch.arange(w.shape[0], device=w.device).split(_HVP_CHUNK):
        v = w.new_zeros(rows.numel(), *w.shape)
        v[torch.arange(rows.numel(), device=w.device), rows] = w[rows]
        v = v.reshape(rows.numel(), -1)
        rho[rows] = (v * matmat(v)).sum(1)
    return rho


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
        probe = _ProbeHessian(model, batches, names, loss_fn or F.cross_entropy, reduce or _identity, gauss_newton)
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
    probe: _ProbeHessian,
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

    q0 = _randn((dim,), generator, weight)
    q0 = q0 / q0.norm()
    hq0 = matvec(q0)  # the first Lanczos product doubles as the Gauss–Newton check
    exact = name in probe.gn and probe.gauss_newton_holds(name, q0, hq0)
    lam, lam_err, iters = _lanczos_max(matvec, q0, hq0, lanczos_tol, lanczos_max_iter)
    if exact:
        trace, rho = probe.gauss_newton_trace_rho(name)
        stderr, hvps, method = weight.new_zeros(()), 0, "gauss-newton"
    else:
        trace, stderr, hvps, method = _trace_estimate(matmat, dim, weight, trace_budget, trace_rtol, generator)
        rho = _neuron_flatness(matmat, weight)
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
