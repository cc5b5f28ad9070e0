"""Average thresholded confidence (ATC, Garg et al., "Leveraging Unlabeled Data to Predict Out-of-Distribution
Performance", ICLR 2022)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from lightning_gensens.functional.confidence import (
    _atc_scores,
    _average_thresholded_confidence_compute,
    _check_score_kind,
)
from lightning_gensens.measures._confidence import ConfidenceMeasure, finite
from lightning_gensens.measures.base import SPLITS, Estimate, Reference, Settings
from lightning_gensens.metrics.confidence import ConfidenceStatistics


class AverageThresholdedConfidence(ConfidenceMeasure):
    """ATC: the threshold t with P_probe(s < t) = e_probe is fitted on the probe's scores and its error (with
    :func:`~lightning_gensens.functional.confidence.atc_threshold`'s tie rule); the predicted test error is
    P_val(s < t). The predicted test loss scales the probe's: l_probe · error / e_probe (ours; the paper predicts
    only the error). The paper fits t on held-out labelled data; the probe is training data, whose error
    understates the test error, so expect ATC here to be optimistic.

    When the probe's error is 0 the threshold is undefined and ATC predicts nothing that run (``estimate`` returns
    ``{}``, so no NaN is logged); likewise while the probe's loss or error is not finite. Logs ``train``/``val``,
    the mean score s of each split.

    Args:
        score: s(x), ``"max_softmax"`` (ATC-MC, the default) or ``"negative_entropy"`` (ATC-NE).
        max_samples: per-sample scores kept per split and rank (a positive int or None: all); ATC on a capped
            split fits or evaluates on that subset (:class:`~lightning_gensens.metrics.ConfidenceStatistics`).
        **kwargs: ``seed`` and ``loss_fn`` of :class:`~lightning_gensens.measures.Measure` (unused).
    """

    name = "atc"
    relative_cost = 1.0

    def __init__(self, score: str = "max_softmax", max_samples: int | None = 100_000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _check_score_kind(score)
        ConfidenceStatistics(max_samples=max_samples)  # validates it
        if max_samples == 0:
            raise ValueError("max_samples must be positive or None: ATC needs the per-sample scores.")
        self.score, self.max_samples = score, max_samples

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, score={self.score!r})"

    def compute(
        self, metrics: Mapping[str, ConfidenceStatistics], net: nn.Module, settings: Settings
    ) -> dict[str, Any]:
        # scores() is a collective, like compute(): called here, on every rank
        return {split: {**metric.compute(), "scores": metric.scores(self.score)} for split, metric in metrics.items()}

    def values(self, computed: Mapping[str, Any]) -> dict[str, Tensor]:
        return {
            split: _atc_scores(computed[split]["mean_confidence"], computed[split]["mean_entropy"], self.score)
            for split in SPLITS
        }

    def estimate(self, computed: Mapping[str, Any], reference: Reference) -> dict[str, Estimate]:
        if not finite(reference):
            return {}
        out = _average_thresholded_confidence_compute(
            computed["train"]["scores"], reference.error, computed["val"]["scores"], reference.loss
        )
        if out is None:  # e_probe = 0: no threshold
            return {}
        return {self.name: Estimate(out["loss"], out["error"])}
