"""ℓ∞ and ℓ2 adversarial attacks (FGSM, PGD) and the first-order prediction of their loss increase.

Simon-Gabriel et al., "First-order adversarial vulnerability", eq. 2 and Lemma 2: to first order in ε the
perturbation δ maximising ∂ₓℓ·δ over ‖δ‖_p ≤ ε raises the loss by ε‖∂ₓℓ‖_q, 1/p + 1/q = 1 (q = 1 for ℓ∞,
q = 2 for ℓ2). Attacks run the model in eval mode (each submodule's mode is restored), never touch the
parameters' ``.grad`` nor the global RNG, and work under ``torch.inference_mode()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_gensens.functional.input_gradient_norm import LossFn, _input_gradients
from lightning_gensens.utilities import check_finite_parameters, check_labels, evaluation_mode

_DUAL = {"linf": 1.0, "l2": 2.0}
"""Dual exponent q of each attack norm p (Lemma 2)."""

_TINY = 1e-12


def _check_attack(model: nn.Module, eps: float, norm: str) -> None:
    check_finite_parameters(model)
    if norm not in _DUAL:
        raise ValueError(f"norm must be one of {sorted(_DUAL)}, got {norm!r}.")
    if not eps >= 0:
        raise ValueError(f"eps must be non-negative, got {eps!r}.")


def _per_sample_norm(t: Tensor) -> Tensor:
    """ℓ2 norm of every sample, shaped to broadcast against ``t``."""
    return t.flatten(1).norm(dim=1).clamp_min(_TINY).view(-1, *([1] * (t.dim() - 1)))


def _steepest_ascent(grad: Tensor, size: float, norm: str) -> Tensor:
    """argmax_{‖δ‖_p ≤ size} ∂ₓℓ·δ: size·sign(∂ₓℓ) for ℓ∞, size·∂ₓℓ/‖∂ₓℓ‖₂ for ℓ2."""
    return size * grad.sign() if norm == "linf" else size * grad / _per_sample_norm(grad)


def _project(delta: Tensor, eps: float, norm: str) -> Tensor:
    """Projection of every sample's perturbation onto the ε-ball of the attack norm."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    return delta * (eps / _per_sample_norm(delta)).clamp(max=1.0)


def _draw(sampler: Callable[..., Tensor], shape: torch.Size, generator: torch.Generator, like: Tensor) -> Tensor:
    """Draw from a private generator (on its own device), returned with the dtype and device of ``like``."""
    return sampler(shape, generator=generator, device=generator.device, dtype=like.dtype).to(like.device)


def fgsm(
    model: nn.Module, x: Tensor, y: Tensor | None, eps: float, norm: str = "linf", loss_fn: LossFn | None = None
) -> Tensor:
    """Fast gradient (sign) method: x + ε·argmax_{‖δ‖_p ≤ 1} ∂ₓℓ·δ, the first-order attack of Lemma 2."""
    _check_attack(model, eps, norm)
    with evaluation_mode(model):
        grad, _ = _input_gradients(model, x, y, loss_fn, "fgsm")
    with torch.inference_mode(False):
        return x.clone() + _steepest_ascent(grad, eps, norm)


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor | None,
    eps: float,
    norm: str = "linf",
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    loss_fn: LossFn | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Projected gradient ascent (Madry et al. 2018) of ℓ(x + δ) over the ε-ball of ``norm``.

    ``steps`` steepest-ascent steps of ``step_size`` (default 2.5·ε/steps), each projected back onto the ball,
    from a uniform random point of the ball drawn from ``generator`` (default: private, seeded 0) when
    ``random_start``. One backward pass per step serves every sample (eval mode: samples do not interact).
    """
    _check_attack(model, eps, norm)
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}.")
    alpha = 2.5 * eps / steps if step_size is None else step_size
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    with torch.inference_mode(False):
        x0 = x.clone()
        delta = torch.zeros_like(x0)
        if random_start and norm == "linf":
            delta = eps * (2 * _draw(torch.rand, x0.shape, gen, x0) - 1)
        elif random_start:  # uniform in the ℓ2 ball: Gaussian direction, radius ε·U^(1/d)
            noise = _draw(torch.randn, x0.shape, gen, x0)
            radius = eps * _draw(torch.rand, x0.shape[:1], gen, x0).pow(1 / math.prod(x0.shape[1:]))
            delta = noise / _per_sample_norm(noise) * radius.view(-1, *([1] * (x0.dim() - 1)))
        with evaluation_mode(model):
            for _ in range(steps):
                grad, _ = _input_gradients(model, x0 + delta, y, loss_fn, "pgd")
                delta = _project(delta + _steepest_ascent(grad, alpha, norm), eps, norm)
        return x0 + delta


def adversarial_loss_increase(
    model: nn.Module,
    x: Tensor,
    y: Tensor | None,
    eps: float,
    norm: str = "linf",
    attack: str = "fgsm",
    loss_fn: LossFn | None = None,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Achieved mean loss increase of an ε-sized ``attack`` and its first-order prediction ε·E_x‖∂ₓℓ‖_q.

    Returns ``{"achieved": E[ℓ(x_adv)] − E[ℓ(x)], "predicted": ε·E‖∂ₓℓ‖_q}`` with q the dual of ``norm``
    (Simon-Gabriel et al., Lemma 2); the two agree for small ε on smooth networks. ``steps``, ``step_size``,
    ``random_start`` and ``generator`` configure ``attack="pgd"`` (a random start costs ℓ2 PGD ~2% of the
    first-order increase at the default step size: it cannot rotate fully onto ∂ₓℓ in 2.5·ε of travel).
    """
    _check_attack(model, eps, norm)
    y = check_labels(y, "adversarial_loss_increase")
    if attack not in ("fgsm", "pgd"):
        raise ValueError(f"attack must be 'fgsm' or 'pgd', got {attack!r}.")
    loss = loss_fn or F.cross_entropy
    if attack == "fgsm":
        x_adv = fgsm(model, x, y, eps, norm, loss_fn)
    else:
        x_adv = pgd(model, x, y, eps, norm, steps, step_size, random_start, loss_fn, generator)
    with evaluation_mode(model):
        grad, clean_sum = _input_gradients(model, x, y, loss_fn, "adversarial_loss_increase")
        with torch.inference_mode(False), torch.no_grad():
            target = y.clone()
            achieved = loss(model(x_adv), target) - clean_sum / target.shape[0]
            predicted = eps * torch.linalg.vector_norm(grad.flatten(1), ord=_DUAL[norm], dim=1).mean()
    return {"achieved": achieved, "predicted": predicted}
