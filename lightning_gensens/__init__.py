"""lightning_gensens: predicted versus actual test loss from sensitivity measures, logged while a network trains."""

from lightning_gensens.callbacks import (
    ActiveNodeBound,
    FisherRaoNorm,
    GeneralizationMonitor,
    InputGradientNorm,
    JacobianNorm,
    LinfNorm,
    MeasureCallback,
    OutputSensitivity,
    RegionSensitivity,
    RelativeFlatness,
    SpectralNorm,
    TangentSensitivity,
    register_measure,
)
from lightning_gensens.ranking import RankedModel, rank_architectures

__version__ = "0.1.0"

__all__ = [
    "ActiveNodeBound",
    "FisherRaoNorm",
    "GeneralizationMonitor",
    "InputGradientNorm",
    "JacobianNorm",
    "LinfNorm",
    "MeasureCallback",
    "OutputSensitivity",
    "RankedModel",
    "RegionSensitivity",
    "RelativeFlatness",
    "SpectralNorm",
    "TangentSensitivity",
    "__version__",
    "rank_architectures",
    "register_measure",
]
