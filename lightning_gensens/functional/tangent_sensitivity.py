"""Tangent sample sensitivity T(x) = Σ_o ‖∂²f_o/∂θ∂x‖²_F (Daróczy, Definition 3.1; Lemma 3.3).

θ is every parameter of the model. For a ReLU MLP (``nn.Linear``/``nn.ReLU``/``nn.Flatten``/``nn.Dropout``/
``nn.Identity`` leaves, eval mode) the mixed derivative factorises: with L_i = ∂f/∂h_i and R_i = ∂a_{i−1}/∂x,
∂²f_o/∂W_i[a,b]∂x_j = L_i[o,a]·R_i[b,j] and biases contribute nothing, so T(x) = Σ_i ‖L_i‖²_F·‖R_i‖²_F exactly,
and it depends on x only through the activation pattern (Lemma 3.3). Other differentiable networks get an
unbiased Hutchinson estimate.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp, vjp, vmap

from lightning_gensens.utilities import check_finite_parameters, evaluation_mode

_CLOSED_FORM_LEAVES: tuple[type[nn.Module], ...] = (nn.Linear, nn.ReLU, nn.Flatten, nn.Dropout, nn.Identity)
_CHUNK_ELEMENTS = 1 << 24  # per-sample factors held at once by the closed form (128 MiB in float64)


def _never_in_forward(module: nn.Module) -> bool:
    """Modules a model holds that do not compute its output: loss modules and torchmetrics Metrics (recognised
    without importing torchmetrics, which this layer does not need)."""
    metric = any(c.__name__ == "Metric" and c.__module__.startswith("torchmetrics") for c in type(module).__mro__)
    return metric or isinstance(module, nn.modules.loss._Loss)


def _leaves(module: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module, bool]]:
    """Yield ``(name, leaf, in_sequential_only)`` in registration order; a reused child is yielded each time."""
    children = [(k, m) for k, m in module._modules.items() if m is not None and not _never_in_forward(m)]
    if not children:
        yield prefix or type(module).__name__, module, True
        return
    if module._parameters:
        raise ValueError(f"module '{prefix or type(module).__name__}' uses parameters outside a Linear layer.")
    for key, child in children:
        for name, leaf, seq in _leaves(child, f"{prefix}.{key}" if prefix else key):
            yield name, leaf, seq and isinstance(module, nn.Sequential)


def relu_mlp_layers(model: nn.Module) -> tuple[list[nn.Module], bool]:
    """The leaf modules of a ReLU MLP in forward order, and whether the order is certain (nested Sequentials).

    Raises ``ValueError`` naming the first module that takes the network outside the closed form.
    Containers other than ``nn.Sequential`` are read in registration order (the convention of
    :func:`weight_layers`); :func:`tangent_sample_sensitivity` checks that order against a forward pass.
    """
    chain, ordered, flattened = [], True, False
    for name, leaf, seq in _leaves(model, ""):
        if not isinstance(leaf, _CLOSED_FORM_LEAVES):
            raise ValueError(
                f"module '{name}' is {type(leaf).__name__}: the closed form of T(x) holds for ReLU MLPs made of "
                "Linear, ReLU, Flatten, Dropout and Identity modules only."
            )
        if isinstance(leaf, nn.Dropout) and leaf.training:
            raise ValueError(f"module '{name}' is a Dropout in training mode; call model.eval() first.")
        if isinstance(leaf, nn.Flatten) and (leaf.start_dim != 1 or leaf.end_dim != -1 or flattened):
            raise ValueError(f"module '{name}' must be a single Flatten(start_dim=1) before the first Linear.")
        flattened = flattened or isinstance(leaf, (nn.Flatten, nn.Linear))
        chain.append(leaf)
        ordered = ordered and seq
    if not any(isinstance(m, nn.Linear) for m in chain):
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer.")
    return chain, ordered


def supports_closed_form(model: nn.Module) -> bool:
    """Whether :func:`tangent_sensitivity_from_masks` applies to ``model`` (structure only)."""
    try:
        relu_mlp_layers(model)
    except ValueError:
        return False
    return True


def _sq_norms(a: Tensor) -> Tensor:
    """‖a‖²_F over the last two axes."""
    return torch.einsum("...ij,...ij->...", a, a)


def _closed_form(chain: Sequence[nn.Module], masks: Sequence[Tensor], root: Tensor, batch: int) -> Tensor:
    """T = Σ_i ‖L_i‖²_F·‖R_i‖²_F for one chunk; ``masks`` are float [B, N_l] in forward order.

    Right side: Fᵀ with F·Fᵀ = R_i·R_iᵀ (None = identity); ``root`` is Fᵀ after the first Linear (W_1ᵀ or the R
    of its QR), so no per-sample factor has more than min(din, N_1) rows. Left side: L_i itself, [B, dout, N_i].
    """
    right, factor, m_iter = [], None, iter(masks)
    for m in chain:
        if isinstance(m, nn.Linear):
            right.append(root.new_tensor(m.in_features) if factor is None else _sq_norms(factor))
            factor = root if factor is None else factor @ m.weight.T
        elif isinstance(m, nn.ReLU):
            mask = next(m_iter)
            factor = torch.diag_embed(mask) if factor is None else factor * mask[..., None, :]
    left, lfac, m_iter = [], None, iter(reversed(masks))
    for m in reversed(chain):
        if isinstance(m, nn.Linear):
            left.append(root.new_tensor(m.out_features) if lfac is None else _sq_norms(lfac))
            lfac = m.weight if lfac is None else lfac @ m.weight
        elif isinstance(m, nn.ReLU):
            mask = next(m_iter)
            lfac = torch.diag_embed(mask) if lfac is None else lfac * mask[..., None, :]
    terms = [lv * rv for lv, rv in zip(reversed(left), right, strict=True)]
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total.expand(batch)


def _check_masks(chain: Sequence[nn.Module], masks: Sequence[Tensor]) -> list[Tensor]:
    """Flatten masks to [B, N_l] and check they fit the ReLUs of ``chain`` one to one."""
    relus = [m for m in chain if isinstance(m, nn.ReLU)]
    if len(masks) != len(relus):
        raise ValueError(f"got {len(masks)} activation masks for {len(relus)} ReLU calls of the network.")
    flat, width = [m.flatten(1) for m in masks], None
    relu_at = 0
    for m in chain:
        if isinstance(m, nn.Linear):
            width = m.out_features
        elif isinstance(m, nn.ReLU):
            if width is not None and flat[relu_at].shape[1] != width:
                raise ValueError(
                    f"activation mask {relu_at} has {flat[relu_at].shape[1]} units, but its ReLU follows a Linear "
                    f"with {width} outputs: the Linear layers must act on flat [B, features] inputs."
                )
            width = flat[relu_at].shape[1]
            relu_at += 1
    return flat


def _masks_closed_form(chain: Sequence[nn.Module], masks: Sequence[Tensor], batch: int) -> Tensor:
    """Closed form over sample chunks that keep the per-sample factors below ``_CHUNK_ELEMENTS``."""
    linears = [m for m in chain if isinstance(m, nn.Linear)]
    with torch.no_grad():
        w1 = linears[0].weight
        root = w1.T if w1.shape[1] <= w1.shape[0] else torch.linalg.qr(w1.T, mode="r").R
        widest = max([m.out_features for m in linears] + [m.shape[1] for m in masks])
        chunk = max(1, _CHUNK_ELEMENTS // widest**2)
        parts = [
            _closed_form(chain, [m[start : start + chunk].to(w1.dtype) for m in masks], root, min(chunk, batch - start))
            for start in range(0, batch, chunk)
        ]
    return torch.cat(parts) if parts else w1.new_zeros(0)


def tangent_sensitivity_from_masks(model: nn.Module, masks: Sequence[Tensor]) -> Tensor:
    """T(A) per activation pattern (Lemma 3.3): Tensor[B] from ReLU masks, one [B, ...] per ReLU call in order.

    ``masks`` are the ReLU pre-activations' signs (h > 0, bool or 0/1), e.g. from captured pre-activations.
    Requires the structure of :func:`relu_mlp_layers` and no batch statistics; expects eval mode.
    """
    chain, _ = relu_mlp_layers(model)
    flat = _check_masks(chain, masks)
    if not flat:
        raise ValueError("a network without ReLU has one activation region; pass x to tangent_sample_sensitivity.")
    return _masks_closed_form(chain, flat, flat[0].shape[0])


def _exact(model: nn.Module, x: Tensor) -> Tensor:
    """Closed form on inputs: one forward through the chain for the masks (checked against ``model`` if unordered)."""
    chain, ordered = relu_mlp_layers(model)
    if x.dim() > 2 and not isinstance(next(m for m in chain if isinstance(m, (nn.Linear, nn.Flatten))), nn.Flatten):
        raise ValueError(f"a Linear layer would act on the last axis of the {x.dim()}-D input; add nn.Flatten().")
    masks, a = [], x
    with torch.no_grad():
        for m in chain:
            if isinstance(m, nn.ReLU):
                masks.append(a > 0)
            a = m(a)
        if not ordered:
            out = model(x)
            if out.shape != a.shape or not torch.allclose(a, out, rtol=1e-4, atol=1e-5 * float(out.abs().max())):
                raise ValueError(
                    f"{type(model).__name__} does not compute its Linear/ReLU modules in registration order; "
                    "the closed form needs an nn.Sequential-like forward."
                )
    return _masks_closed_form(chain, masks, x.shape[0])


def _rademacher_like(p: Tensor, generator: torch.Generator | None) -> Tensor:
    device = generator.device if generator is not None else p.device
    signs = torch.randint(0, 2, p.shape, generator=generator, device=device)
    return (2 * signs - 1).to(device=p.device, dtype=p.dtype)


def _hutchinson_probes(model: nn.Module, x: Tensor, n_probes: int, generator: torch.Generator | None) -> Tensor:
    """Per-probe estimates Σ_o ‖M_oᵀu‖², M_o = ∂²f_o/∂θ∂x, u Rademacher over θ: Tensor[n_probes, B].

    E_u[uᵀ M_o M_oᵀ u] = ‖M_o‖²_F. M_oᵀu = ∂_x(∂_θ f_o · u): a forward-mode jvp over θ, then one reverse pass
    over x per output (vmapped). Exact in x and o, so its variance is far below the bilinear uᵀM_o v estimator.
    """
    with torch.inference_mode(False), torch.no_grad():
        x = x.detach().clone()
        params = {k: v.detach() for k, v in model.named_parameters()}
        probes = [{k: _rademacher_like(v, generator) for k, v in params.items()} for _ in range(n_probes)]

        def estimate(u: dict[str, Tensor]) -> Tensor:
            def directional(xx: Tensor) -> Tensor:
                return jvp(lambda p: functional_call(model, p, (xx,)), (params,), (u,))[1].flatten(1)

            out, vjp_fn = vjp(directional, x)  # type: ignore[misc]  # stub: 3-tuple only with has_aux=True
            basis = torch.eye(out.shape[1], dtype=out.dtype, device=out.device)[:, None, :].expand(-1, *out.shape)
            (grads,) = vmap(vjp_fn)(basis)
            return grads.square().flatten(2).sum((0, 2))

        stacked = {k: torch.stack([u[k] for u in probes]) for k in params}
        chunk = max(1, _CHUNK_ELEMENTS // (x.numel() * model(x[:1]).numel()))  # probes held at once
        return vmap(estimate, chunk_size=chunk)(stacked)


def tangent_sensitivity_hutchinson(
    model: nn.Module, x: Tensor, n_probes: int = 8, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Unbiased Hutchinson estimate of T(x) (Definition 3.1) and its standard error, each Tensor[B].

    Works for any network differentiable in θ and x (CNNs, BatchNorm, GELU), evaluated in eval mode. Each
    probe costs one jvp over θ and dout reverse passes; ``generator`` draws the probes (global RNG if None).
    """
    if n_probes < 2:
        raise ValueError(f"a standard error needs n_probes >= 2, got {n_probes}.")
    check_finite_parameters(model)
    with evaluation_mode(model):
        est = _hutchinson_probes(model, x, n_probes, generator)
    return est.mean(0), est.std(0) / math.sqrt(n_probes)


def tangent_sample_sensitivity(
    model: nn.Module, x: Tensor, method: str = "auto", n_probes: int = 8, generator: torch.Generator | None = None
) -> Tensor:
    """T(x) = Σ_o ‖∂²f_o/∂θ∂x‖²_F per sample (Definition 3.1), Tensor[B], evaluated in eval mode.

    ``method``: "exact" (closed form Σ_i ‖L_i‖²_F·‖R_i‖²_F of ReLU MLPs, batched), "hutchinson" (``n_probes``
    Rademacher probes, any differentiable network), "auto" (exact where it applies, else Hutchinson).
    """
    if method not in ("auto", "exact", "hutchinson"):
        raise ValueError(f"method must be 'auto', 'exact' or 'hutchinson', got {method!r}.")
    if n_probes < 1:
        raise ValueError(f"n_probes must be at least 1, got {n_probes}.")
    if x.shape[0] == 0:
        raise ValueError("tangent_sample_sensitivity needs at least one sample.")
    check_finite_parameters(model)
    with evaluation_mode(model):
        if method != "hutchinson":
            try:
                return _exact(model, x)
            except ValueError:
                if method == "exact":
                    raise
        return _hutchinson_probes(model, x, n_probes, generator).mean(0)
