"""The shift test: which shift a pool shows (none, label, covariate), and the estimate made for that shift (ours)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lightning_gensens.capture import Captured
from lightning_gensens.functional.neighbours import neighbour_distances
from lightning_gensens.functional.shift_test import ShiftTests, shift_estimate, shift_tests, transport_means
from lightning_gensens.functional.temperature import fit_temperature
from lightning_gensens.functional.transport import class_prior
from lightning_gensens.measures._confidence import finite
from lightning_gensens.measures._logits import LogitSampleMeasure, ReferenceFit
from lightning_gensens.measures.base import Estimate, Measure, Reference, Requirement, Settings
from lightning_gensens.metrics.input_sample import InputSample


@dataclass
class _ReferenceFit(ReferenceFit):
    """What the reference gives every pool: its temperature and its transport costs onto its class frequencies
    (T = 1)."""

    transport: tuple[Tensor, Tensor]


class ShiftTest(LogitSampleMeasure[_ReferenceFit]):
    """Tests whether a pool's inputs differ from the labelled reference's, whether its predicted classes do, and
    whether it looks like a label shift of the reference (its *label-shift twin*); then predicts the pool's error and
    loss with the estimator made for the shift the tests keep (:mod:`lightning_gensens.functional.shift_test`):
    DoC-TS / DoE-TS without shift, the same differences against the twin under label shift, under covariate shift
    the mean of the reference's error and loss shifted by the difference and scaled by the ratio of transport costs
    (COT), corrected by the reference's errors per cell of (distance to the ``neighbours``-th nearest training-probe
    sample in the input of the output layer, Sun et al. 2022; softmax confidence) where that input is captured (the
    last Linear/Conv layer's output is the logits). Its estimator: ``shift_gated``.

    Measures pools only (the reference is the validation data, or the training probe without a validation loop):
    the validation data is not tested against the probe. Each split keeps a seeded uniform sample of at most
    ``max_samples`` samples with their input features (:class:`~lightning_gensens.metrics.InputSample`); the tests
    read ``test_samples`` of them per side with ``permutations`` permutations, seeded, so every rank and every rerun
    decides alike. Predicts nothing while the reference has no labels or its loss or error is not finite. Logs, per
    pool, ``shift`` (the kept hypothesis: 0 none, 1 label shift, 2 covariate shift), ``p_shift``, ``p_classes``,
    ``p_twin`` and ``temperature``.

    Args:
        max_samples: samples kept per split (the transport problems are ``max_samples`` × classes).
        alpha: level of the tests.
        test_samples: samples per side of each two-sample test.
        permutations: permutations per energy test (the p-value's resolution is 1 / (permutations + 1)).
        dims: input features kept per sample (more are hashed into this many).
        neighbours: k of the nearest-neighbour distance; None leaves the covariate estimate to the transport costs
            (and captures nothing more).
        head_dims: features of the output layer's input kept per sample (more are hashed into this many, which
            distorts the distances: keep it at least the layer's width where memory allows).
        **kwargs: ``seed`` (of the sample and the tests) and ``loss_fn`` (unused) of
            :class:`~lightning_gensens.measures.Measure`.
    """

    name = "shift_test"
    reads_probe = True
    relative_cost = 1.0  # reads the captured logits and inputs; two permutation tests per pool: a rider of pools
    pools_only = True

    def __init__(
        self,
        max_samples: int | None = 2048,
        alpha: float = 0.05,
        test_samples: int = 512,
        permutations: int = 100,
        dims: int = 128,
        neighbours: int | None = 5,
        head_dims: int = 2048,
        **kwargs: Any,
    ) -> None:
        super().__init__(max_samples, **kwargs)
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must lie in (0, 1), got {alpha}.")
        for name, value in (("test_samples", test_samples), ("permutations", permutations)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if neighbours is not None and (
            isinstance(neighbours, bool) or not isinstance(neighbours, int) or neighbours < 1
        ):
            raise ValueError(f"neighbours must be a positive int or None, got {neighbours!r}.")
        InputSample(dims=dims, head_dims=head_dims)  # validates them
        self.alpha, self.test_samples, self.permutations, self.dims = alpha, test_samples, permutations, dims
        self.neighbours, self.head_dims = neighbours, head_dims
        self._distances: tuple[Tensor, Tensor] | None = None

    def requirements(self) -> Requirement:
        return self.requires | Requirement.HEAD if self.neighbours else self.requires

    def make_metric(self, net: nn.Module, settings: Settings) -> InputSample:
        return InputSample(max_samples=self.max_samples, seed=settings.seed, dims=self.dims, head_dims=self.head_dims)

    def shares(self, other: Measure[Any]) -> bool:
        """Only another shift test's samples, with the same sample and features: others keep no inputs."""
        if not isinstance(other, ShiftTest) or not super().shares(other):
            return False
        heads = (other.neighbours is None, other.head_dims) == (self.neighbours is None, self.head_dims)
        return other.dims == self.dims and heads

    def update(self, metric: InputSample, record: Captured, net: nn.Module) -> None:  # type: ignore[override]
        metric.update(record.logits, record.y, record.x, record.head if self.neighbours else None)

    def compute(self, metrics: Mapping[str, Any], net: nn.Module, settings: Settings) -> dict[str, Any]:
        computed = super().compute(metrics, net, settings)
        computed["tests"] = None
        if self.fitted_target(computed) is not None:
            ref = computed["reference"] = self._labelled(computed["train"])
            target = computed["val"]
            computed["tests"] = shift_tests(
                ref["logits"],
                ref["labels"],
                ref["features"],
                target["logits"],
                target["features"],
                computed["fit"].temperature,
                alpha=self.alpha,
                test_samples=self.test_samples,
                permutations=self.permutations,
                generator=torch.Generator().manual_seed(settings.seed),
            )
            computed["neighbours"] = self._neighbours(computed, metrics.get("probe") is metrics["train"])
        return computed

    def _neighbours(self, computed: Mapping[str, Any], probe_reference: bool) -> tuple[Tensor, Tensor] | None:
        """The reference's and the target's distances to the probe's k-th nearest sample, where every split kept
        the output layer's inputs (the reference's computed once per run)."""
        probe, ref, target = computed.get("probe"), computed["reference"], computed["val"]
        if self.neighbours is None or probe is None or any("heads" not in s for s in (probe, ref, target)):
            return None
        if self.neighbours + int(probe_reference) > len(probe["heads"]):
            return None
        if self._distances is None or self._distances[0] is not computed["train"]["logits"]:
            distances = neighbour_distances(probe["heads"], ref["heads"], self.neighbours, exclude_self=probe_reference)
            self._distances = (computed["train"]["logits"], distances)
        return self._distances[1], neighbour_distances(probe["heads"], target["heads"], self.neighbours)

    def values(self, computed: Mapping[str, Any]) -> dict[str, Tensor]:
        out = super().values(computed)
        tests: ShiftTests | None = computed["tests"]
        if tests is not None:
            out["shift"] = torch.tensor(float(tests.shift), dtype=torch.float64)
            out.update(p_shift=tests.p_shift, p_classes=tests.p_classes, p_twin=tests.p_twin)
        return out

    def estimate(self, computed: Mapping[str, Any], reference: Reference) -> dict[str, Estimate]:
        tests: ShiftTests | None = computed["tests"]
        if tests is None or not finite(reference):
            return {}
        ref, target, fit = computed["reference"], computed["val"], computed["fit"]
        result = shift_estimate(
            ref["logits"],
            ref["labels"],
            ref["features"],
            reference.error,
            reference.loss,
            target["logits"],
            target["features"],
            fit.temperature,
            tests=tests,
            reference_transport=fit.transport,
            neighbours=computed["neighbours"],
        )
        return {"shift_gated": Estimate(result.loss, result.error)}

    @staticmethod
    def _labelled(sample: Mapping[str, Tensor]) -> dict[str, Tensor]:
        keep = sample["labels"] >= 0
        return {key: sample[key][keep] for key in ("logits", "labels", "features", "heads") if key in sample}

    def fit(self, logits: Tensor, labels: Tensor) -> _ReferenceFit:
        temperature = fit_temperature(logits, labels)
        return _ReferenceFit(temperature, transport_means(logits, class_prior(labels, logits.shape[1])))
