"""The difference of confidences and of entropies on the temperature-scaled softmax (DoC, Guillory et al., ICCV
2021, after temperature scaling, Guo et al., ICML 2017)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from lightning_gensens.functional.confidence import _difference_of_confidences_compute
from lightning_gensens.functional.temperature import _fit_temperature, _scaled_means
from lightning_gensens.measures._confidence import finite
from lightning_gensens.measures._logits import LogitSampleMeasure, ReferenceFit
from lightning_gensens.measures.base import Estimate, Reference


@dataclass
class _ReferenceFit(ReferenceFit):
    """What the reference gives every target: its temperature and its mean scaled confidence and entropy."""

    confidence: Tensor
    entropy: Tensor


class TemperatureScaling(LogitSampleMeasure[_ReferenceFit]):
    """Fits the temperature T by NLL on the labelled reference and shifts the reference's error and loss by the
    change in mean confidence and entropy of softmax(z/T) (:mod:`lightning_gensens.functional.temperature`); label-free
    on the target, no forward pass of its own. Its estimator ``doc_ts``:

    - error = e_ref + conf̄_ref − conf̄_tgt (DoC-TS), loss = l_ref + H̄_tgt − H̄_ref (DoE-TS).

    At T = 1 these are :class:`~lightning_gensens.measures.DifferenceOfConfidences`'s; the fitted T removes the
    reference's over- or under-confidence first. The reference is the validation data for a pool and the training
    probe for the validation data. Each split keeps a seeded uniform sample of at most ``max_samples`` logits
    (:class:`~lightning_gensens.metrics.LogitSample`). Predicts nothing while the reference has no labels or its loss
    or error is not finite. Logs ``temperature``.

    Args:
        max_samples: logits kept per split.
        **kwargs: ``seed`` (of the sample) and ``loss_fn`` (unused) of :class:`~lightning_gensens.measures.Measure`.
    """

    name = "temperature_scaling"
    relative_cost = 1.0  # reads the captured logits: a rider of every run

    def estimate(self, computed: Mapping[str, Any], reference: Reference) -> dict[str, Estimate]:
        fitted = self.fitted_target(computed)
        if fitted is None or not finite(reference):
            return {}
        fit, target = fitted
        target_means = _scaled_means(target, fit.temperature)
        doc = _difference_of_confidences_compute(
            fit.confidence, fit.entropy, *target_means, reference.loss, reference.error
        )
        return {"doc_ts": Estimate(doc["loss"], doc["error"])}

    def fit(self, logits: Tensor, labels: Tensor) -> _ReferenceFit:
        return _ReferenceFit(*_fit_temperature(logits, labels))
