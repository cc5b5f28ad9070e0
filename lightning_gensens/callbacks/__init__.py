"""Lightning callbacks: one per measure, and the monitor that runs them all."""

from lightning_gensens.callbacks.active_node_bound import ActiveNodeBound
from lightning_gensens.callbacks.base import (
    MEASURES,
    Estimate,
    GensensCallback,
    MeasureCallback,
    register_measure,
)
from lightning_gensens.callbacks.fisher_rao_norm import FisherRaoNorm
from lightning_gensens.callbacks.input_gradient_norm import InputGradientNorm
from lightning_gensens.callbacks.jacobian_norm import JacobianNorm
from lightning_gensens.callbacks.linf_norm import LinfNorm
from lightning_gensens.callbacks.monitor import GeneralizationMonitor
from lightning_gensens.callbacks.output_sensitivity import OutputSensitivity
from lightning_gensens.callbacks.region_sensitivity import RegionSensitivity
from lightning_gensens.callbacks.relative_flatness import RelativeFlatness
from lightning_gensens.callbacks.spectral_norm import SpectralNorm
from lightning_gensens.callbacks.tangent_sensitivity import TangentSensitivity

__all__ = [
    "MEASURES",
    "ActiveNodeBound",
    "Estimate",
    "FisherRaoNorm",
    "GeneralizationMonitor",
    "GensensCallback",
    "InputGradientNorm",
    "JacobianNorm",
    "LinfNorm",
    "MeasureCallback",
    "OutputSensitivity",
    "RegionSensitivity",
    "RelativeFlatness",
    "SpectralNorm",
    "TangentSensitivity",
    "register_measure",
]
