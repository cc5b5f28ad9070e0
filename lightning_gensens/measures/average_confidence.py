"""Average confidence (AC): predicted test error = 1 − mean max-softmax, predicted test loss = mean entropy."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning_gensens.functional.confidence import _average_confidence_compute
from lightning_gensens.measures._confidence import ConfidenceMeasure
from lightning_gensens.measures.base import Estimate, Reference


class AverageConfidence(ConfidenceMeasure):
    """AC on the validation data, labels unused: error ≈ 1 − E_val max_k softmax(f)_k (the max-softmax score of
    Hendrycks & Gimpel, ICLR 2017, as used by Guillory et al., ICCV 2021) and loss ≈ E_val H(softmax(f)), its
    loss analogue. Calibrated models make it exact in expectation; it ignores the probe."""

    name = "average_confidence"
    relative_cost = 1.0

    def estimate(self, computed: Mapping[str, Any], reference: Reference) -> dict[str, Estimate]:
        val = computed["val"]
        out = _average_confidence_compute(val["mean_confidence"], val["mean_entropy"])
        return {self.name: Estimate(out["loss"], out["error"])}
