"""Matrix-free curvature of one layer's Hessian block, for :mod:`~lightning_gensens.functional.relative_flatness`.

:class:`ProbeHessian` caches the double-backward graph of every probe batch, so each Hessian-vector product costs
one backward pass, and keeps the Gauss–Newton factors of Linear layers for the closed forms. On top of its
products: λ_max by Lanczos with full reorthogonalisation, Tr by Hutch++ (Meyer et al. 2021, Algorithm 1) and the
neuron-wise ρ(j) of Petzka et al. (Theorem 3) exactly.
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
from lightning_gensens.utilities import check_labels

Reduce = Callable[[Tensor], Tensor]
"""Sum of a tensor over ranks (identity on one process); called identically on every rank."""

_HVP_CHUNK = 32
"""Hessian-vector products evaluated together by one vmapped backward pass."""

_PROBE_CHUNK = 4
"""Hutch++ residual probes drawn between two standard-error checks."""

_GN_MAX_ELEMENTS = 2**26
"""Largest B·K·(K + n_out) of one batch's Gauss–Newton factors; beyond it a layer uses the estimators."""


class ProbeHessian:
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


def normal_draw(shape: Sequence[int] | torch.Size, generator: torch.Generator, like: Tensor) -> Tensor:
    """Standard normal draw from a private generator, returned with the dtype and device of ``like``."""
    return torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=like.dtype).to(like.device)


def lanczos_max(
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


def trace_estimate(
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
    q = torch.linalg.qr(matmat(normal_draw((k, dim), generator, like)).T).Q.T
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


def neuron_flatness(matmat: Callable[[Tensor], Tensor], weight: Tensor) -> Tensor:
    """ρ(j) = w(j)ᵀ H_jj w(j) exactly, one HVP per neuron: ⟨V_j, H V_j⟩ with V_j = W masked to row j."""
    w = weight.reshape(weight.shape[0], -1)
    rho = w.new_empty(w.shape[0])
    for rows in torch.arange(w.shape[0], device=w.device).split(_HVP_CHUNK):
        v = w.new_zeros(rows.numel(), *w.shape)
        v[torch.arange(rows.numel(), device=w.device), rows] = w[rows]
        v = v.reshape(rows.numel(), -1)
        rho[rows] = (v * matmat(v)).sum(1)
    return rho
