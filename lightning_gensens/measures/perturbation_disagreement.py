"""Calibrated weight-perturbation disagreement: a label-free estimator of a split's error and loss (ours, after
Jiang et al., ICLR 2022)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from lightning_gensens.capture import Captured
from lightning_gensens.functional.perturbation import SIGMAS, perturbation_disagreement
from lightning_gensens.measures._confidence import finite
from lightning_gensens.measures.base import Estimate, Measure, Reference, Requirement, Settings
from lightning_gensens.metrics.perturbation_disagreement import (
    PerturbationDisagreement as PerturbationDisagreementMetric,
)


class PerturbationDisagreement(Measure[PerturbationDisagreementMetric]):
    """Runs ``draws`` Gaussian perturbations of the weights, θ + σ·rms(W)·ε per weight tensor W, at every scale σ
    of ``sigmas`` on each split (:mod:`lightning_gensens.functional.perturbation`). On the labelled reference σ* is
    the scale at which the perturbed networks disagree with the network as often as it errs; the estimator
    ``perturbation_disagreement`` predicts the target's error as their disagreement rate there and its loss as the
    network's cross-entropy against their predictions there. Label-free on the target; class logits, any network
    (the loss predicted is a cross-entropy).

    The reference is the validation data for a pool and the training probe for the validation data (a probe the
    network fits without error calibrates σ* to the grid's smallest scale). Logs no value of its own.

    Args:
        sigmas: the increasing grid of relative scales σ.
        draws: perturbed networks per scale (each sample costs ``draws`` × ``len(sigmas)`` forward passes).
        **kwargs: ``seed`` (of the perturbations) and ``loss_fn`` (unused) of
            :class:`~lightning_gensens.measures.Measure`.
    """

    name = "perturbation_disagreement"
    requires = Requirement.CLASS_LOGITS
    relative_cost = 96.0  # draws × scales forward passes per sample, at the defaults

    def __init__(self, sigmas: Sequence[float] = SIGMAS, draws: int = 8, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        PerturbationDisagreementMetric(sigmas, draws)  # validates them
        self.sigmas, self.draws = tuple(sigmas), draws

    def relative_cost_for(self, net: nn.Module) -> float:
        return float(self.draws * len(self.sigmas))

    def make_metric(self, net: nn.Module, settings: Settings) -> PerturbationDisagreementMetric:
        return PerturbationDisagreementMetric(self.sigmas, self.draws, seed=settings.seed)

    def update(self, metric: PerturbationDisagreementMetric, record: Captured, net: nn.Module) -> None:
        metric.update(net, record.x, record.logits)

    def values(self, computed: Mapping[str, Any]) -> dict[str, Tensor]:
        return {}

    def estimate(self, computed: Mapping[str, Any], reference: Reference) -> dict[str, Estimate]:
        if not finite(reference):
            return {}
        ref, target = computed["train"], computed["val"]
        error, loss = perturbation_disagreement(
            (ref["disagreement"], ref["cross_entropy"]),
            reference.error,
            (target["disagreement"], target["cross_entropy"]),
            self.sigmas,
        )
        return {self.name: Estimate(loss, error)}
