"""Optimal-transport estimators of a split's error and loss (Lu et al., "Characterizing Out-of-Distribution Error via
Optimal Transport", NeurIPS 2023): COT, COTT, and the transport loss (ours)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lightning_gensens.functional.temperature import fit_temperature
from lightning_gensens.functional.transport import (
    _calibrated,
    class_prior,
    cott_threshold,
    label_shift_prior,
    transport_costs,
)
from lightning_gensens.measures._confidence import finite
from lightning_gensens.measures._logits import LogitSampleMeasure, ReferenceFit
from lightning_gensens.measures.base import Estimate, Reference


@dataclass
class _ReferenceFit(ReferenceFit):
    """What the reference gives every target: its temperature, class distribution π, its own COT costs and transport
    loss."""

    prior: Tensor
    costs: Tensor
    loss: Tensor


class OptimalTransport(LogitSampleMeasure[_ReferenceFit]):
    """Transports the target's temperature-scaled softmax vectors onto the labelled reference's class distribution π
    (:mod:`lightning_gensens.functional.transport`); label-free on the target. Its estimators:

    - ``cot``: predicted error = the optimal cost with cost 1 − p_ik (Lu et al. §3);
    - ``cot_em``: COT onto the target's own class distribution, estimated by EM under label shift (Saerens et al.
      2002) instead of assuming π;
    - ``cott``: predicted error = the share of target samples whose COT cost exceeds the threshold that reproduces
      the reference error on the reference's own coupling (Lu et al. §3.3);
    - ``transport_loss``: predicted loss W = the optimal cost with cost −log p_ik (ours); where the target's classes
      follow π, W never exceeds the actual loss (the true labels are one coupling);
    - ``transport_loss_ratio_em``: l_ref · W_em / W_ref, with W_em the transport loss onto the EM estimate of the
      target's classes and W_ref the reference's own (ours); l_ref + W_em − W_ref where W_ref is 0.

    The reference is the validation data for a pool and the training probe for the validation data; T is fitted
    by NLL on its labelled samples and π is their class frequencies. Each split keeps a seeded uniform sample of at
    most ``max_samples`` logits (:class:`~lightning_gensens.metrics.LogitSample`): exact up to that many samples,
    a subsample beyond. Predicts nothing while the reference has no labels. Logs ``temperature``.

    Args:
        max_samples: logits kept per split (the transport problem is ``max_samples`` × classes).
        temperature_scaling: fit T on the reference (else T = 1).
        **kwargs: ``seed`` (of the sample) and ``loss_fn`` (unused) of :class:`~lightning_gensens.measures.Measure`.
    """

    name = "optimal_transport"
    relative_cost = 10.0  # a few exact transport problems per split pair: not a rider of every run

    def __init__(self, max_samples: int | None = 4096, temperature_scaling: bool = True, **kwargs: Any) -> None:
        super().__init__(max_samples, **kwargs)
        self.temperature_scaling = temperature_scaling

    def estimate(self, computed: Mapping[str, Any], reference: Reference) -> dict[str, Estimate]:
        fitted = self.fitted_target(computed)
        if fitted is None:
            return {}
        fit, target = fitted
        costs = transport_costs(target, fit.prior, fit.temperature, "error")
        shifted_prior = label_shift_prior(target, fit.prior, fit.temperature)
        out = {
            "cot": Estimate(None, costs.mean()),
            "cot_em": Estimate(None, transport_costs(target, shifted_prior, fit.temperature).mean()),
            "transport_loss": Estimate(transport_costs(target, fit.prior, fit.temperature, "loss").mean(), None),
        }
        if finite(reference):
            t = cott_threshold(fit.costs, reference.error)
            out["cott"] = Estimate(None, (costs > t).double().mean())
            loss_em = transport_costs(target, shifted_prior, fit.temperature, "loss").mean()
            out["transport_loss_ratio_em"] = Estimate(_calibrated(reference.loss.double(), loss_em, fit.loss), None)
        return out

    def fit(self, logits: Tensor, labels: Tensor) -> _ReferenceFit:
        one = torch.ones((), dtype=torch.float64)
        temperature = fit_temperature(logits, labels) if self.temperature_scaling else one
        prior = class_prior(labels, logits.shape[1])
        costs = transport_costs(logits, prior, temperature, "error")
        loss = transport_costs(logits, prior, temperature, "loss").mean()
        return _ReferenceFit(temperature, prior, costs, loss)
