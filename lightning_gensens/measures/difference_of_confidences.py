"""Difference of confidences (DoC, Guillory et al., "Predicting with Confidence on Unseen Distributions", ICCV 2021)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning_gensens.functional.confidence import _difference_of_confidences_compute
from lightning_gensens.measures._confidence import ConfidenceMeasure, finite
from lightning_gensens.measures.base import Estimate, Reference


class DifferenceOfConfidences(ConfidenceMeasure):
    """DoC: the probe's error shifted by the drop in mean max-softmax confidence, e ≈ e_ref + conf̄_ref − conf̄_val
    (Guillory et al. 2021), and its loss analogue l ≈ l_ref + H̄_val − H̄_ref with the mean predictive entropy
    H̄. Neither is clipped. Predicts nothing (``{}``) while the probe's loss or error is not finite."""

    name = "difference_of_confidences"
    relative_cost = 1.0

    def estimate(self, computed: Mapping[str, Any], reference: Reference) -> dict[str, Estimate]:
        if not finite(reference):
            return {}
        ref, val = computed["train"], computed["val"]
        out = _difference_of_confidences_compute(
            ref["mean_confidence"],
            ref["mean_entropy"],
            val["mean_confidence"],
            val["mean_entropy"],
            reference.loss,
            reference.error,
        )
        return {self.name: Estimate(out["loss"], out["error"])}
