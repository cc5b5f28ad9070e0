"""lightning_gensens: predicted versus actual test loss from sensitivity measures, logged while a network trains.

Names are imported on first use, so ``lightning_gensens.functional`` and ``lightning_gensens.metrics`` load without
Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

_EXPORTS = {
    "GeneralizationMonitor": "lightning_gensens.callbacks",
    "MeasureCallback": "lightning_gensens.callbacks",
    "ActiveNodeBound": "lightning_gensens.callbacks",
    "AgreementOnTheLine": "lightning_gensens.callbacks",
    "FisherRaoNorm": "lightning_gensens.callbacks",
    "InputGradientNorm": "lightning_gensens.callbacks",
    "JacobianNorm": "lightning_gensens.callbacks",
    "LinfNorm": "lightning_gensens.callbacks",
    "OutputSensitivity": "lightning_gensens.callbacks",
    "RegionSensitivity": "lightning_gensens.callbacks",
    "RelativeFlatness": "lightning_gensens.callbacks",
    "SpectralNorm": "lightning_gensens.callbacks",
    "TangentSensitivity": "lightning_gensens.callbacks",
    "AverageConfidence": "lightning_gensens.callbacks",
    "AverageThresholdedConfidence": "lightning_gensens.callbacks",
    "DifferenceOfConfidences": "lightning_gensens.callbacks",
    "Trivial": "lightning_gensens.callbacks",
    "OptimalTransport": "lightning_gensens.callbacks",
    "Measure": "lightning_gensens.measures",
    "register_measure": "lightning_gensens.measures",
    "RankedModel": "lightning_gensens.ranking",
    "rank_architectures": "lightning_gensens.ranking",
}

if TYPE_CHECKING:
    from lightning_gensens.callbacks import (
        ActiveNodeBound,
        AgreementOnTheLine,
        AverageConfidence,
        AverageThresholdedConfidence,
        DifferenceOfConfidences,
        FisherRaoNorm,
        GeneralizationMonitor,
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
    from lightning_gensens.measures import Measure, register_measure
    from lightning_gensens.ranking import RankedModel, rank_architectures


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lightning_gensens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


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
    "Measure",
    "MeasureCallback",
    "OptimalTransport",
    "OutputSensitivity",
    "RankedModel",
    "RegionSensitivity",
    "RelativeFlatness",
    "SpectralNorm",
    "TangentSensitivity",
    "Trivial",
    "__version__",
    "rank_architectures",
    "register_measure",
]
