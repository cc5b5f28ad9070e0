"""lightning_gensens: predicted versus actual test loss from sensitivity measures, logged while a network trains."""

from lightning_gensens.callbacks import (
    FisherRaoNorm,
    GeneralizationMonitor,
    JacobianNorm,
    LinfNorm,
    MeasureCallback,
    OutputSensitivity,
    SpectralNorm,
    register_measure,
)

__version__ = "0.1.0"

__all__ = [
    "FisherRaoNorm",
    "GeneralizationMonitor",
    "JacobianNorm",
    "LinfNorm",
    "MeasureCallback",
    "OutputSensitivity",
    "SpectralNorm",
    "__version__",
    "register_measure",
]
