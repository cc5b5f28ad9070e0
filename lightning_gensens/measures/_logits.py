"""Shared base of the measures that read a seeded sample of each split's captured logits and fit something on the
labelled reference once per run (temperature scaling, optimal transport)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from torch import Tensor, nn

from lightning_gensens.capture import Captured
from lightning_gensens.measures.base import Measure, Requirement, Settings
from lightning_gensens.metrics.logit_sample import LogitSample


@dataclass
class ReferenceFit:
    """What a measure fits on the reference's labelled logits: at least a temperature (logged as ``temperature``)."""

    temperature: Tensor


F = TypeVar("F", bound=ReferenceFit)


class LogitSampleMeasure(Measure[LogitSample], Generic[F]):
    """Each split keeps a seeded uniform sample of at most ``max_samples`` (logits, label) pairs
    (:class:`~lightning_gensens.metrics.LogitSample`, the same on every DDP rank); ``compute`` adds the reference's
    fit under ``"fit"`` (:meth:`fit`, None while the reference has no labels), made once per run and reused for every
    target measured against that reference, and ``values`` logs its ``temperature``. Class logits only."""

    requires = Requirement.CLASS_LOGITS

    def __init__(self, max_samples: int | None = 4096, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        LogitSample(max_samples=max_samples)  # validates it
        self.max_samples = max_samples
        self._fitted: tuple[Tensor, F | None] | None = None

    def make_metric(self, net: nn.Module, settings: Settings) -> LogitSample:
        return LogitSample(max_samples=self.max_samples, seed=settings.seed)

    def shares(self, other: Measure[Any]) -> bool:
        """Another such measure's samples, where they are as many and drawn with the same seed."""
        same = isinstance(other, LogitSampleMeasure) and other.max_samples == self.max_samples
        return same and other.seed == self.seed

    def update(self, metric: LogitSample, record: Captured, net: nn.Module) -> None:
        metric.update(record.logits, record.y)

    def compute(self, metrics: Mapping[str, LogitSample], net: nn.Module, settings: Settings) -> dict[str, Any]:
        computed: dict[str, Any] = {split: metric.compute() for split, metric in metrics.items()}
        computed["fit"] = self._reference_fit(computed["train"])
        return computed

    def values(self, computed: Mapping[str, Any]) -> dict[str, Tensor]:
        fit: F | None = computed["fit"]
        return {} if fit is None else {"temperature": fit.temperature}

    def fit(self, logits: Tensor, labels: Tensor) -> F:
        """What the measure fits on the reference's labelled ``logits`` [n, K] and ``labels`` [n]."""
        raise NotImplementedError

    def _reference_fit(self, reference: Mapping[str, Tensor]) -> F | None:
        """The reference's fit, reused while the reference is the same computed sample; None without labels."""
        logits, labels = reference["logits"], reference["labels"]
        if self._fitted is not None and self._fitted[0] is logits:
            return self._fitted[1]
        labelled = labels >= 0
        kept = int(labelled.sum())  # one host read; where every sample is labelled (the usual case) none is copied
        z, y = (logits, labels) if kept == len(labels) else (logits[labelled], labels[labelled])
        fit = self.fit(z, y) if kept else None
        self._fitted = (logits, fit)
        return fit

    @staticmethod
    def fitted_target(computed: Mapping[str, Any]) -> tuple[F, Tensor] | None:
        """The reference's fit and the target's logits, None while there is no fit or no target sample."""
        fit: F | None = computed["fit"]
        target: Tensor = computed["val"]["logits"]
        return None if fit is None or target.shape[0] == 0 else (fit, target)
