"""Shared base of the label-free confidence baselines: the captured logits' confidence statistics per split."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from lightning_gensens.capture import Captured
from lightning_gensens.functional.confidence import _confidence_update
from lightning_gensens.measures.base import SPLITS, Measure, Reference, Requirement, Settings
from lightning_gensens.metrics.confidence import ConfidenceStatistics

CONFIDENCE, ENTROPY = "max_softmax", "entropy"
"""Keys of the per-sample scores in a record's cache (:func:`confidence_scores`)."""


class ConfidenceMeasure(Measure[ConfidenceStatistics]):
    """Mean max-softmax confidence and mean predictive entropy of the probe (``train``) and of the validation data
    (``val``), from the logits the monitor already captures (no extra forward, no labels). Class logits only.

    Logs ``train``/``val`` (mean confidence) and ``train_entropy``/``val_entropy`` (mean entropy).
    """

    requires = Requirement.CLASS_LOGITS
    max_samples: int | None = 0
    """Per-sample scores each split keeps (none: these baselines need only the means)."""

    def make_metric(self, net: nn.Module, settings: Settings) -> ConfidenceStatistics:
        return ConfidenceStatistics(max_samples=self.max_samples)

    def shares(self, other: Measure[Any]) -> bool:
        """Another confidence measure's Metrics, where they keep the per-sample scores this one keeps."""
        return isinstance(other, ConfidenceMeasure) and self.max_samples in (0, other.max_samples)

    def update(self, metric: ConfidenceStatistics, record: Captured, net: nn.Module) -> None:
        metric.update(record.logits, confidence_scores(record))

    def values(self, computed: Mapping[str, Any]) -> dict[str, Tensor]:
        out = {split: computed[split]["mean_confidence"] for split in SPLITS}
        out.update({f"{split}_entropy": computed[split]["mean_entropy"] for split in SPLITS})
        return out


def confidence_scores(record: Captured) -> tuple[Tensor, Tensor]:
    """The per-sample max-softmax confidence and predictive entropy of ``record``'s logits (float64 [B] each),
    computed once per record and shared by every confidence measure through ``record.cache``."""
    cache = record.cache
    if CONFIDENCE not in cache:
        cache[CONFIDENCE], cache[ENTROPY] = _confidence_update(record.logits)
    return cache[CONFIDENCE], cache[ENTROPY]


def finite(reference: Reference) -> bool:
    """Whether the probe's loss and error are both finite (the baselines shifting them need both)."""
    return math.isfinite(float(reference.loss)) and math.isfinite(float(reference.error))
