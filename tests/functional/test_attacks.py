"""FGSM and PGD: loss increase, ε-ball, the first-order prediction of Lemma 2, no side effects."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_gensens.functional.attacks import adversarial_loss_increase, fgsm, pgd
from lightning_gensens.models import small_cnn


def tanh_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 3)).double()


def data(n: int = 64) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 10, generator=gen, dtype=torch.float64), torch.randint(0, 3, (n,), generator=gen)


def per_sample_norms(delta: Tensor, norm: str) -> Tensor:
    return delta.flatten(1).abs().amax(1) if norm == "linf" else delta.flatten(1).norm(dim=1)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_attacks_raise_the_loss_inside_the_ball(norm: str) -> None:
    model, (x, y) = tanh_net(), data()
    eps = 0.3
    clean = F.cross_entropy(model(x), y, reduction="none")
    for x_adv in (fgsm(model, x, y, eps, norm), pgd(model, x, y, eps, norm, steps=10)):
        assert bool((per_sample_norms(x_adv - x, norm) <= eps * (1 + 1e-12)).all())
        adv = F.cross_entropy(model(x_adv), y, reduction="none")
        assert adv.mean() > clean.mean() and bool((adv > clean).float().mean() > 0.9)
    fgsm_loss = F.cross_entropy(model(fgsm(model, x, y, eps, norm)), y)
    pgd_loss = F.cross_entropy(model(pgd(model, x, y, eps, norm, steps=20, random_start=False)), y)
    assert pgd_loss >= fgsm_loss * (1 - 1e-3)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize(("attack", "random_start"), [("fgsm", False), ("pgd", False), ("pgd", True)])
def test_first_order_prediction_for_small_eps(norm: str, attack: str, random_start: bool) -> None:
    """Simon-Gabriel et al., Lemma 2: the loss rises by ε·E‖∂ₓℓ‖_q, q = 1 (ℓ∞) or 2 (ℓ2), for small ε."""
    model, (x, y) = tanh_net(), data()
    slack = 3e-2 if random_start and norm == "l2" else 0.0  # see adversarial_loss_increase
    for eps, rtol in ((1e-3, 5e-3), (1e-2, 5e-2)):
        got = adversarial_loss_increase(model, x, y, eps, norm, attack=attack, random_start=random_start)
        assert got["predicted"] > 0
        torch.testing.assert_close(got["achieved"], got["predicted"], rtol=rtol + slack, atol=0)


def test_no_side_effects_and_inference_mode() -> None:
    torch.manual_seed(2)
    model = small_cnn(1, side=6, num_classes=3, width=3).double()
    model.train()
    model[4].eval()
    x = torch.randn(8, 1, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (8,))
    rng = torch.get_rng_state()
    with torch.inference_mode():
        a = pgd(model, x.clone(), y.clone(), 0.1, "l2", steps=3, generator=torch.Generator().manual_seed(3))
        b = fgsm(model, x.clone(), y.clone(), 0.1)
        inc = adversarial_loss_increase(model, x.clone(), y.clone(), 0.1, attack="pgd", steps=2)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())
    assert model.training and model[1].training and not model[4].training
    assert not a.is_inference() and not b.is_inference() and inc["achieved"] > 0
    again = pgd(model, x, y, 0.1, "l2", steps=3, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, again, rtol=0, atol=0)


def test_bad_input() -> None:
    model, (x, y) = tanh_net(), data(4)
    with pytest.raises(ValueError, match="norm"):
        fgsm(model, x, y, 0.1, norm="l1")
    with pytest.raises(ValueError, match="eps"):
        pgd(model, x, y, -0.1)
    with pytest.raises(ValueError, match="needs labels"):
        fgsm(model, x, None, 0.1)
    with pytest.raises(ValueError, match="attack"):
        adversarial_loss_increase(model, x, y, 0.1, attack="cw")
