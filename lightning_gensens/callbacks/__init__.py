"""Lightning callbacks: the monitor that runs every measure, and one callback per measure."""

from lightning_gensens.callbacks.measure_callbacks import (
    ActiveNodeBound,
    AgreementOnTheLine,
    AverageConfidence,
    AverageThresholdedConfidence,
    DifferenceOfConfidences,
    FisherRaoNorm,
    InputGradientNorm,
    JacobianNorm,
    LinfNorm,
    MeasureCallback,
    OptimalTransport,
    OutputSensitivity,
    RegionSensitivity,
    RelativeFlatness,
    SpectralNorm,
    TangentSensitivity,
    Trivial,
)
from lightning_gensens.callbacks.monitor import GeneralizationMonitor

__all__ = [
    "ActiveNodeBound",
    "AgreementOnTheLine",
    "AverageConfidence",
    "AverageThresholdedConfidence",
    "DifferenceOfConfidences",
    "FisherRaoNorm",
    "GeneralizationMonitor",
    "InputGradientNorm",
    "JacobianNorm",
    "LinfNorm",
    "MeasureCallback",
    "OptimalTransport",
    "OutputSensitivity",
    "RegionSensitivity",
    "RelativeFlatness",
    "SpectralNorm",
    "TangentSensitivity",
    "Trivial",
]
