"""Agreement-on-the-line over the run's own checkpoints (Baek et al., "Agreement-on-the-Line: Predicting the
Performance of Neural Networks under Distribution Shift", NeurIPS 2022, §5.3): ALine-D's predicted error."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lightning_gensens.capture import Captured
from lightning_gensens.functional.agreement import MIN_CHECKPOINTS, agreement_rates, aline_d
from lightning_gensens.measures.base import Estimate, Measure, Reference, Requirement, Settings
from lightning_gensens.metrics.prediction_sample import PredictionSample


@dataclass
class _History:
    """One split's kept predictions at its last checkpoints (the runs ``runs``), on the ``count`` samples it saw."""

    count: int
    runs: list[int] = field(default_factory=list)
    predictions: list[Tensor] = field(default_factory=list)
    labels: Tensor | None = None
    """The labels of the kept samples at the latest run (``-1`` where unlabeled)."""


class AgreementOnTheLine(Measure[PredictionSample]):
    """ALine-D (Baek et al. 2022, §5.3; :func:`~lightning_gensens.functional.aline_d`) with the model at the
    monitor's last ``max_checkpoints`` measuring runs, the current one included, as its checkpoints. Its estimator:

    - ``aline``: predicted error = 1 − Φ(x) of the current checkpoint, from the agreement rates of every pair of
      checkpoints on the labelled reference and on the target and the checkpoints' reference accuracies.

    Each split keeps the argmax predictions of the same seeded ``max_samples`` stream positions every run
    (:class:`~lightning_gensens.metrics.PredictionSample`: the validation data and the pools are read in the same
    order every run); the measure keeps each split's predictions of its last ``max_checkpoints`` runs and
    checkpoints them. A run whose split saw another number of samples starts that split's history afresh. Rates
    are clipped half a sample from 0 and 1. Predicts nothing before ``3`` checkpoints measured both splits, or
    while the reference has no labels.

    The monitor keeps one Metric per split for a whole fit, so a split's history is keyed by its Metric: the order
    :meth:`make_metric` made it in, which a resumed fit repeats. A run is told from the next by the Metrics'
    computed values: a split computed anew that this run already computed starts the next run.

    Args:
        max_samples: predictions kept per split.
        max_checkpoints: the most recent runs kept per split (at least 3; the benchmark's skill grows with it: +0.14
            with 10 of 25 epochs, +0.32 with all 25). Checkpointed: 8 bytes × ``max_samples`` per split and run.
        **kwargs: ``seed`` (of the sample) and ``loss_fn`` (unused) of :class:`~lightning_gensens.measures.Measure`.
    """

    name = "aline"
    requires = Requirement.CLASS_LOGITS
    relative_cost = 2.0  # cheap, but not needed fresh at every run: planned by the budget, not a rider

    _index: dict[int, int]
    """The history index of each Metric made, by ``id``."""
    _made: int
    _current: dict[int, Mapping[str, Tensor]]
    """What each split computed in the current run, by history index."""
    _run: int
    _histories: dict[int, _History]

    def __init__(self, max_samples: int | None = 4096, max_checkpoints: int = 25, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        PredictionSample(max_samples=max_samples)  # validates it
        if isinstance(max_checkpoints, bool) or not isinstance(max_checkpoints, int):
            raise ValueError(f"max_checkpoints must be an int, got {max_checkpoints!r}.")
        if max_checkpoints < MIN_CHECKPOINTS:
            raise ValueError(f"max_checkpoints must be at least {MIN_CHECKPOINTS}, got {max_checkpoints}.")
        self.max_samples, self.max_checkpoints = max_samples, max_checkpoints
        self.load_state_dict({})

    def make_metric(self, net: nn.Module, settings: Settings) -> PredictionSample:
        metric = PredictionSample(max_samples=self.max_samples, seed=settings.seed)
        self._register(metric)
        return metric

    def update(self, metric: PredictionSample, record: Captured, net: nn.Module) -> None:
        metric.update(record.logits, record.y)

    def compute(self, metrics: Mapping[str, PredictionSample], net: nn.Module, settings: Settings) -> dict[str, Any]:
        """Each split's history with this run's predictions recorded (a copy: later runs leave it as it is)."""
        computed: dict[str, Any] = {}
        for split, metric in metrics.items():
            index = self._index[id(metric)] if id(metric) in self._index else self._register(metric)
            history = self._record(index, metric.compute())
            computed[split] = _History(history.count, list(history.runs), list(history.predictions), history.labels)
        return computed

    def values(self, computed: Mapping[str, Any]) -> dict[str, Tensor]:
        return {}

    def estimate(self, computed: Mapping[str, Any], reference: Reference) -> dict[str, Estimate]:
        ref, target = computed["train"], computed["val"]
        both = set(ref.runs)
        runs = [run for run in target.runs if run in both][-self.max_checkpoints :]
        assert ref.labels is not None
        labelled = ref.labels >= 0
        if len(runs) < MIN_CHECKPOINTS or not bool(labelled.any()):
            return {}
        ref_predictions = torch.stack([ref.predictions[ref.runs.index(run)] for run in runs])[:, labelled]
        target_predictions = torch.stack([target.predictions[target.runs.index(run)] for run in runs])
        accuracy = (ref_predictions == ref.labels[labelled]).double().mean(dim=1)
        eps = 0.5 / min(ref_predictions.shape[1], target_predictions.shape[1])
        predicted = aline_d(agreement_rates(ref_predictions), agreement_rates(target_predictions), accuracy, eps)
        return {"aline": Estimate(None, (1.0 - predicted[-1]).clamp(0.0, 1.0))}

    def _register(self, metric: PredictionSample) -> int:
        """Key ``metric``'s split history by the order the Metrics were made (or first computed, if made elsewhere)."""
        self._index[id(metric)], self._made = self._made, self._made + 1
        return self._made - 1

    def _record(self, index: int, computed: Mapping[str, Tensor]) -> _History:
        """Add a split's computed predictions to its history, once per run; a split computed anew that this run
        already holds starts the next run."""
        if self._current.get(index) is computed:
            return self._histories[index]
        if index in self._current:
            self._run += 1
            self._current = {}
        self._current[index] = computed
        count = int(computed["count"])
        history = self._histories.get(index)
        if history is None or history.count != count:
            history = self._histories[index] = _History(count)
        history.runs.append(self._run)
        history.predictions.append(computed["predictions"].cpu())
        history.labels = computed["labels"].cpu()
        del history.runs[: -self.max_checkpoints], history.predictions[: -self.max_checkpoints]
        return history

    def state_dict(self) -> dict[str, Any]:
        return {
            "run": self._run,
            "splits": {
                index: {"count": h.count, "runs": list(h.runs), "predictions": list(h.predictions), "labels": h.labels}
                for index, h in self._histories.items()
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the histories; the next Metrics made are keyed 0, 1, … again and the next run is a new one."""
        self._index, self._made, self._current = {}, 0, {}
        self._run = int(state.get("run", -1)) + 1
        self._histories = {
            int(index): _History(int(h["count"]), list(h["runs"]), list(h["predictions"]), h["labels"])
            for index, h in state.get("splits", {}).items()
        }
