"""One Lightning Callback per measure: a :class:`GeneralizationMonitor` of that one measure, under the measure's
CamelCase name, so each measure is a torchmetrics Metric wrapped in a Callback."""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

from lightning_gensens import measures
from lightning_gensens.callbacks.monitor import GeneralizationMonitor

_MONITOR_ARGS = tuple(
    name for name in inspect.signature(GeneralizationMonitor.__init__).parameters if name not in ("self", "measures")
)
_SHARED = ("seed", "loss_fn")  # settings of the measure; alone, the callback's monitor uses them too


class MeasureCallback(GeneralizationMonitor):
    """A monitor of the one measure :attr:`measure_class`, built from the measure's arguments and the monitor's
    keyword arguments (``probe_size``, ``every_n_epochs``, ``prefix``, …).

    Its shared keys are namespaced by the measure (``<prefix>/<name>/test_loss``), so several measure callbacks in
    one Trainer never share a logged key. Handed to :class:`GeneralizationMonitor` (``measures=[...]``), only its
    measure is used, with its own ``seed`` and ``loss_fn``; monitor settings given to it are refused there.
    """

    measure_class: ClassVar[type[measures.Measure]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        monitor = {k: kwargs.pop(k) for k in _MONITOR_ARGS if k in kwargs and k not in _SHARED}
        measure = self.measure_class(*args, **kwargs)
        shared = {k: kwargs[k] for k in _SHARED if kwargs.get(k) is not None}
        super().__init__(measures=[measure], **monitor, **shared)
        self.monitor_settings = monitor
        self.measure = measure

    def _state_key_parts(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "measure": self.measure.name}

    @property
    def shared_prefix(self) -> str:
        return f"{self.prefix}/{self.measure.name}"


class LinfNorm(MeasureCallback):
    """Callback of :class:`lightning_gensens.measures.LinfNorm` (Daróczy eq. 1, estimators eq. 5 and log-norm)."""

    measure_class = measures.LinfNorm


class ActiveNodeBound(MeasureCallback):
    """Callback of :class:`lightning_gensens.measures.ActiveNodeBound` (Daróczy eq. 2, estimator eq. 6)."""

    measure_class = measures.ActiveNodeBound


class TangentSensitivity(MeasureCallback):
    """Callback of :class:`lightning_gensens.measures.TangentSensitivity` (Daróczy Definition 3.1)."""

    measure_class = measures.TangentSensitivity


class RegionSensitivity(MeasureCallback):
    """Callback of :class:`lightning_gensens.measures.RegionSensitivity` (Daróczy eq. 3, 4, 7)."""

    measure_class = measures.RegionSensitivity


class OutputSensitivity(MeasureCallback):
    """Callback of :class:`lightning_gensens.measures.OutputSensitivity` (Forouzesh eq. 2, estimator eq. 9)."""

    measure_class = measures.OutputSensitivity


class RelativeFlatness(MeasureCallback):
    """Callback of :class:`lightning_gensens.measures.RelativeFlatness` (Petzka et al., Table 1)."""

    measure_class = measures.RelativeFlatness


class InputGradientNorm(MeasureCallback):
    """Callback of :class:`lightning_gensens.measures.InputGradientNorm` (Simon-Gabriel et al., Lemma 2)."""

    measure_class = measures.InputGradientNorm


class JacobianNorm(MeasureCallback):
    """Callback of :class:`lightning_gensens.measures.JacobianNorm` (the follow-up paper's l⁴)."""

    measure_class = measures.JacobianNorm


class FisherRaoNorm(MeasureCallback):
    """Callback of :class:`lightning_gensens.measures.FisherRaoNorm` (the follow-up paper's eq. 10, l⁵)."""

    measure_class = measures.FisherRaoNorm


class SpectralNorm(MeasureCallback):
    """Callback of :class:`lightning_gensens.measures.SpectralNorm` (the follow-up paper's l⁶)."""

    measure_class = measures.SpectralNorm


class Trivial(MeasureCallback):
    """Callback of :class:`lightning_gensens.measures.Trivial` (test = train: the yardstick of skill)."""

    measure_class = measures.Trivial


class OptimalTransport(MeasureCallback):
    """Callback of :class:`lightning_gensens.measures.OptimalTransport` (COT and COTT, Lu et al. 2023; transport
    loss)."""

    measure_class = measures.OptimalTransport


class AverageConfidence(MeasureCallback):
    """Callback of :class:`lightning_gensens.measures.AverageConfidence` (AC; Hendrycks and Gimpel)."""

    measure_class = measures.AverageConfidence


class DifferenceOfConfidences(MeasureCallback):
    """Callback of :class:`lightning_gensens.measures.DifferenceOfConfidences` (DoC; Guillory et al., 2021)."""

    measure_class = measures.DifferenceOfConfidences


class AverageThresholdedConfidence(MeasureCallback):
    """Callback of :class:`lightning_gensens.measures.AverageThresholdedConfidence` (ATC; Garg et al., 2022)."""

    measure_class = measures.AverageThresholdedConfidence


class AgreementOnTheLine(MeasureCallback):
    """Callback of :class:`lightning_gensens.measures.AgreementOnTheLine` (ALine-D over the run's checkpoints; Baek
    et al. 2022, §5.3)."""

    measure_class = measures.AgreementOnTheLine
