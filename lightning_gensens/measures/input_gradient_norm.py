"""The input-gradient norm E‖∂ₓℓ‖_q (Simon-Gabriel et al., Lemma 2) with the ratio estimator and the adversarial
damage it predicts beside the damage attacks achieve."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_gensens import estimators
from lightning_gensens.capture import Captured
from lightning_gensens.functional.attacks import adversarial_loss_increase
from lightning_gensens.measures.base import Estimate, Measure, Reference, Requirement, Settings
from lightning_gensens.metrics.input_gradient_norm import InputGradientNorm as InputGradientNormMetric

_ATTACK_NORM = {"q1": "linf", "q2": "l2"}  # q is the dual of the attack's norm p


class InputGradientNorm(Measure[InputGradientNormMetric]):
    """E‖∂ₓℓ‖_q for q = 1 and 2 on probe and validation; predicts E_te/E_tr·l_tr for each q. Needs labels.

    Logs ``input_gradient_norm/{train,val}`` for the first q and ``…/{train,val}_q<q>`` for the others, with
    estimators ``input_gradient_norm`` and ``input_gradient_norm_q<q>``.

    With ``attack_eps``, the first ``attack_samples`` validation samples (per rank) are attacked at the end of
    the run: for ℓ∞ (q = 1) and ℓ2 (q = 2) it logs the first-order predicted loss increase ε·E‖∂ₓℓ‖_q
    (``…/attack_<norm>/predicted``) beside the increase achieved by FGSM (``…/fgsm``) and by a ``pgd_steps``-step
    PGD (``…/pgd``).
    """

    name = "input_gradient_norm"
    relative_cost = 8.0
    requires = Requirement.LABELS

    def __init__(
        self,
        q: Sequence[float] = (1, 2),
        attack_eps: float | None = None,
        attack_samples: int = 256,
        pgd_steps: int = 10,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        InputGradientNormMetric(q)  # validates the exponents
        if attack_eps is not None and not attack_eps > 0:
            raise ValueError(f"attack_eps must be positive, got {attack_eps}.")
        keys = {f"q{float(v):g}" for v in q}
        if attack_eps is not None and not keys & set(_ATTACK_NORM):
            raise ValueError("attack_eps needs q = 1 (ℓ∞ attacks) or q = 2 (ℓ2 attacks).")
        self.q, self.attack_eps, self.attack_samples, self.pgd_steps = tuple(q), attack_eps, attack_samples, pgd_steps

    def make_metric(self, net: nn.Module, settings: Settings) -> InputGradientNormMetric:
        keep = self.attack_samples if self.attack_eps is not None else 0
        return InputGradientNormMetric(self.q, settings.loss_fn, keep=keep)

    def update(self, metric: InputGradientNormMetric, record: Captured, net: nn.Module) -> None:
        assert record.y is not None
        metric.update(net, record.x, record.y)

    def compute(
        self, metrics: Mapping[str, InputGradientNormMetric], net: nn.Module, settings: Settings
    ) -> dict[str, Any]:
        computed = super().compute(metrics, net, settings)
        val = metrics["val"]
        if self.attack_eps is not None:
            x, y = val.kept()
            generator = torch.Generator(device=x.device).manual_seed(settings.seed)
            computed["attacks"] = {
                norm: {
                    attack: adversarial_loss_increase(
                        net,
                        x,
                        y,
                        self.attack_eps,
                        norm,
                        attack,
                        settings.loss_fn,
                        steps=self.pgd_steps,
                        generator=generator,
                    )
                    for attack in ("fgsm", "pgd")
                }
                for q, norm in _ATTACK_NORM.items()
                if q in computed["val"]
            }
        return computed

    def values(self, computed: Mapping[str, Any]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for split in ("train", "val"):
            for i, (q, value) in enumerate(computed[split].items()):
                out[split if i == 0 else f"{split}_{q}"] = value
        for norm, results in computed.get("attacks", {}).items():
            out[f"attack_{norm}/predicted"] = results["fgsm"]["predicted"]
            out.update({f"attack_{norm}/{attack}": result["achieved"] for attack, result in results.items()})
        return out

    def estimate(self, computed: Mapping[str, Any], reference: Reference) -> dict[str, Estimate]:
        out = {}
        for i, (q, test) in enumerate(computed["val"].items()):
            probe = computed["train"][q]
            out[self.name if i == 0 else f"{self.name}_{q}"] = Estimate(
                estimators.ratio(test, probe, reference.loss), estimators.ratio(test, probe, reference.error)
            )
        return out
