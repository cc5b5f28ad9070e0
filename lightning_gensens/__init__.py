"""lightning_gensens: predicted versus actual test loss from sensitivity measures, logged while a network trains."""

from lightning_gensens.callbacks import (
    GeneralizationMonitor,
    LinfNorm,
    MeasureCallback,
    OutputSensitivity,
    SpectralNorm,
    register_measure,
)

__version__ = "0.1.0"

__all__ = [
    "GeneralizationMonitor",
    "LinfNorm",
    "MeasureCallback",
    "OutputSensitivity",
    "SpectralNorm",
    "__version__",
    "register_measure",
]
