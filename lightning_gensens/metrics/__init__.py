"""torchmetrics Metrics: one per measure, with DDP-reducible states."""

from lightning_gensens.metrics.fisher_rao_norm import FisherRaoNorm
from lightning_gensens.metrics.jacobian_norm import JacobianNorm
from lightning_gensens.metrics.linf_norm import LinfNorm
from lightning_gensens.metrics.output_sensitivity import OutputSensitivity
from lightning_gensens.metrics.spectral_norm import SpectralNorm

__all__ = ["FisherRaoNorm", "JacobianNorm", "LinfNorm", "OutputSensitivity", "SpectralNorm"]
