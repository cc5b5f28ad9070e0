"""The measure protocol: what the monitor asks of a measure. A measure is a plug-in, not a Callback.

A measure declares what it needs (:class:`Requirement`), says whether a network suits it (:meth:`Measure.check`),
builds its torchmetrics Metric (:meth:`Measure.make_metric`), feeds it from captured forward passes
(:meth:`Measure.update`), turns the computed Metrics into logged values and predicted test losses
(:meth:`Measure.values`, :meth:`Measure.estimate`), and checkpoints what its estimators remember.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric

from lightning_gensens import estimators
from lightning_gensens.capture import Captured
from lightning_gensens.functional.input_gradient_norm import LossFn

SPLITS = ("train", "val")
M = TypeVar("M", bound=Metric)
WEIGHTS = "weights"
"""Key of the one Metric of a weight-only measure (it has no splits)."""


class Requirement(enum.Flag):
    """What a measure needs from the model and the data."""

    NONE = 0
    LABELS = enum.auto()
    """Labelled batches (the measure differentiates the loss)."""
    PREACTIVATIONS = enum.auto()
    """The hidden ReLU pre-activations of the captured forward pass."""
    WEIGHT_ONLY = enum.auto()
    """Computed from the weights alone, once per measuring (keys ``train`` and ``val`` are equal)."""
    CLASS_LOGITS = enum.auto()
    """Logits of shape ``[B, K]`` with K ≥ 2 classes."""
    RELU = enum.auto()
    """A piecewise-linear network with ``nn.ReLU`` modules."""
    HEAD = enum.auto()
    """The input of the output layer in the captured forward pass (:attr:`~lightning_gensens.capture.Captured.head`;
    None where the last Linear/Conv layer's output is not the logits)."""


@dataclass(frozen=True)
class Settings:
    """Settings a measure may leave to its monitor: the seed of its noise and the mean-reduced loss."""

    seed: int = 0
    loss_fn: LossFn = F.cross_entropy


@dataclass
class Estimate:
    """A predicted test loss and a predicted test error, each where the estimator defines it (``None`` otherwise)."""

    loss: Tensor | None
    error: Tensor | None = None


@dataclass
class Reference:
    """Loss and error of the labelled reference split (the training probe) at the same epoch, and the number of
    outputs the model gives per sample."""

    loss: Tensor
    error: Tensor
    num_outputs: int


class PreviousValues:
    """What a time-ratio estimator remembers of the previous run (θ^{(t−1)}); checkpointed."""

    def __init__(self) -> None:
        self.values: dict[str, float] | None = None

    def advance(self, current: Mapping[str, Tensor]) -> dict[str, Tensor] | None:
        """Return the previous run's values (None at the first run) and remember ``current``."""
        previous, self.values = self.values, {k: float(v) for k, v in current.items()}
        if previous is None:
            return None
        device = next(iter(current.values())).device
        return {k: torch.tensor(v, dtype=torch.float64, device=device) for k, v in previous.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"previous": self.values}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.values = state.get("previous")


class Measure(Generic[M]):
    """Base of every measure. Subclasses set :attr:`name` and :attr:`requires` and implement
    :meth:`make_metric` and :meth:`update`; the defaults give each split's value and the ratio rule
    m(X_te)/m(X_tr)·l_tr of the follow-up paper, applied to the probe's loss and error.

    Args:
        seed: seed of the measure's noise; ``None`` inherits the monitor's.
        loss_fn: mean-reduced ``loss_fn(logits, y)``; ``None`` inherits the monitor's (cross-entropy by default).
    """

    name: ClassVar[str]
    requires: ClassVar[Requirement] = Requirement.NONE
    relative_cost: ClassVar[float] = 10.0
    """A conservative guess of what a run on a few samples per split costs, in forward calls of the model on as
    many samples. A compute budget starts a measure once its share covers the guess (and times it then); 1 or less
    marks a measure that only reads captured outputs or a few weights, which may start at once."""
    pools_only: ClassVar[bool] = False
    """Whether the measure predicts for pools only (the validation data is not measured against the probe)."""
    reads_probe: ClassVar[bool] = False
    """Whether :meth:`compute` also reads the training probe's metric, as ``"probe"``, where the reference is the
    validation data (the same metric as ``"train"`` otherwise)."""

    def __init__(self, *, seed: int | None = None, loss_fn: LossFn | None = None) -> None:
        if seed is not None and not isinstance(seed, int):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__}.")
        self.seed, self.loss_fn = seed, loss_fn

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    def needs(self, requirement: Requirement) -> bool:
        return bool(self.requirements().value & requirement.value)  # on the ints: a Flag operation costs more

    def relative_cost_for(self, net: nn.Module) -> float:
        """:attr:`relative_cost` of this configured instance on ``net`` (by default the class's)."""
        return self.relative_cost

    def requirements(self) -> Requirement:
        """What this configured instance needs (by default the class's :attr:`requires`)."""
        return self.requires

    def settings(self, defaults: Settings) -> Settings:
        """This measure's own settings where set, the monitor's ``defaults`` otherwise."""
        return Settings(
            seed=defaults.seed if self.seed is None else self.seed, loss_fn=self.loss_fn or defaults.loss_fn
        )

    def check(self, net: nn.Module) -> str | None:
        """Why the measure is not defined for ``net`` (in eval mode), or None if it is."""
        return None

    def describe(self, net: nn.Module) -> str | None:
        """A line the monitor logs once per fit on ``net`` (e.g. the method an ``"auto"`` setting chose), or None."""
        return None

    def make_metric(self, net: nn.Module, settings: Settings) -> M:
        """A fresh Metric of one split for ``net``'s architecture (pure: it keeps no model, changes nothing)."""
        raise NotImplementedError

    def shares(self, other: Measure[Any]) -> bool:
        """Whether this measure may read the Metrics ``other`` makes (:meth:`make_metric`, fed by ``other``'s
        :meth:`update`) instead of its own, where both run on the same samples: the monitor then feeds and computes
        them once for both. By default never."""
        return False

    def update(self, metric: M, record: Captured, net: nn.Module) -> None:
        """Feed one captured forward pass (weight-only measures: the weights, once per run)."""
        raise NotImplementedError

    def compute(self, metrics: Mapping[str, M], net: nn.Module, settings: Settings) -> dict[str, Any]:
        """Each split's value from its Metric (``weights`` for weight-only measures)."""
        return {split: metric.compute() for split, metric in metrics.items()}

    def values(self, computed: Mapping[str, Any]) -> dict[str, Tensor]:
        """Scalars logged under ``<prefix>/<name>/``: by default each split's value."""
        return dict(computed)

    def estimate(self, computed: Mapping[str, Any], reference: Reference) -> dict[str, Estimate]:
        """Predicted test loss and error per estimator; by default the ratio rule on :meth:`ratio_values`."""
        test, probe = self.ratio_values(computed)
        return {
            self.name: Estimate(
                estimators.ratio(test, probe, reference.loss), estimators.ratio(test, probe, reference.error)
            )
        }

    def ratio_values(self, computed: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        """(m(X_te), m(X_tr)) for the ratio rule."""
        return computed["val"], computed["train"]

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs (Python scalars, lists, dicts and tensors only)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


class TimeRatioMeasure(Measure[M]):
    """A weight-only measure whose estimators compare this run's weights θ^{(t)} with the previous run's θ^{(t−1)};
    what it remembers of the previous run is checkpointed."""

    requires = Requirement.WEIGHT_ONLY

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.previous = PreviousValues()

    def state_dict(self) -> dict[str, Any]:
        return self.previous.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.previous.load_state_dict(state)
