"""torchmetrics Metrics: one per measure, the confidence statistics of the baselines, and a split's loss; every
state reducible across DDP ranks."""

from lightning_gensens.metrics.active_node_bound import ActiveNodeBound
from lightning_gensens.metrics.confidence import ConfidenceStatistics
from lightning_gensens.metrics.fisher_rao_norm import FisherRaoNorm
from lightning_gensens.metrics.input_gradient_norm import InputGradientNorm
from lightning_gensens.metrics.input_sample import InputSample
from lightning_gensens.metrics.jacobian_norm import JacobianNorm
from lightning_gensens.metrics.linf_norm import LinfNorm
from lightning_gensens.metrics.logit_sample import LogitSample
from lightning_gensens.metrics.output_sensitivity import OutputSensitivity
from lightning_gensens.metrics.perturbation_disagreement import PerturbationDisagreement
from lightning_gensens.metrics.prediction_sample import PredictionSample
from lightning_gensens.metrics.region_sensitivity import RegionSensitivity
from lightning_gensens.metrics.relative_flatness import RelativeFlatness
from lightning_gensens.metrics.spectral_norm import SpectralNorm
from lightning_gensens.metrics.split_loss import SplitLoss
from lightning_gensens.metrics.tangent_sensitivity import TangentSensitivity

__all__ = [
    "ActiveNodeBound",
    "ConfidenceStatistics",
    "FisherRaoNorm",
    "InputGradientNorm",
    "InputSample",
    "JacobianNorm",
    "LinfNorm",
    "LogitSample",
    "OutputSensitivity",
    "PerturbationDisagreement",
    "PredictionSample",
    "RegionSensitivity",
    "RelativeFlatness",
    "SpectralNorm",
    "SplitLoss",
    "TangentSensitivity",
]
