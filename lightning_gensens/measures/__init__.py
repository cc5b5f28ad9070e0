"""Measures as plug-ins: one module per measure, each a :class:`Measure` (not a Callback) that the monitor runs.

:data:`MEASURES` maps the name of every measure the monitor runs by default to its class; :func:`register_measure`
adds one (a measure can also be handed to the monitor as an instance without registering it).
"""

from __future__ import annotations

from lightning_gensens.measures.active_node_bound import ActiveNodeBound
from lightning_gensens.measures.agreement import AgreementOnTheLine
from lightning_gensens.measures.atc import AverageThresholdedConfidence
from lightning_gensens.measures.average_confidence import AverageConfidence
from lightning_gensens.measures.base import (
    Estimate,
    LossFn,
    Measure,
    PreviousValues,
    Reference,
    Requirement,
    Settings,
    TimeRatioMeasure,
)
from lightning_gensens.measures.difference_of_confidences import DifferenceOfConfidences
from lightning_gensens.measures.fisher_rao_norm import FisherRaoNorm
from lightning_gensens.measures.input_gradient_norm import InputGradientNorm
from lightning_gensens.measures.jacobian_norm import JacobianNorm
from lightning_gensens.measures.linf_norm import LinfNorm
from lightning_gensens.measures.optimal_transport import OptimalTransport
from lightning_gensens.measures.output_sensitivity import OutputSensitivity
from lightning_gensens.measures.region_sensitivity import RegionSensitivity
from lightning_gensens.measures.relative_flatness import RelativeFlatness
from lightning_gensens.measures.spectral_norm import SpectralNorm
from lightning_gensens.measures.tangent_sensitivity import TangentSensitivity
from lightning_gensens.measures.trivial import Trivial

MEASURES: dict[str, type[Measure]] = {
    cls.name: cls
    for cls in (
        Trivial,
        AverageConfidence,
        DifferenceOfConfidences,
        AverageThresholdedConfidence,
        OptimalTransport,
        AgreementOnTheLine,
        LinfNorm,
        ActiveNodeBound,
        TangentSensitivity,
        RegionSensitivity,
        OutputSensitivity,
        RelativeFlatness,
        InputGradientNorm,
        JacobianNorm,
        FisherRaoNorm,
        SpectralNorm,
    )
}


def register_measure(cls: type[Measure]) -> type[Measure]:
    """Add ``cls`` to the measures :class:`~lightning_gensens.GeneralizationMonitor` runs by default (usable as a
    class decorator); a name already taken is refused."""
    if not (isinstance(cls, type) and issubclass(cls, Measure)):
        raise TypeError(f"register_measure takes a Measure subclass, got {cls!r}.")
    if cls.name in MEASURES:
        raise ValueError(f"a measure named {cls.name!r} is already registered ({MEASURES[cls.name].__name__}).")
    MEASURES[cls.name] = cls
    return cls


__all__ = [
    "MEASURES",
    "ActiveNodeBound",
    "AgreementOnTheLine",
    "AverageConfidence",
    "AverageThresholdedConfidence",
    "DifferenceOfConfidences",
    "Estimate",
    "FisherRaoNorm",
    "InputGradientNorm",
    "JacobianNorm",
    "LinfNorm",
    "LossFn",
    "Measure",
    "OptimalTransport",
    "OutputSensitivity",
    "PreviousValues",
    "TimeRatioMeasure",
    "Reference",
    "RegionSensitivity",
    "RelativeFlatness",
    "Requirement",
    "Settings",
    "SpectralNorm",
    "TangentSensitivity",
    "Trivial",
    "register_measure",
]
