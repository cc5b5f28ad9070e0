"""Pure math of every measure: (model, tensors) -> tensors, no state and no Lightning."""

from lightning_gensens.functional.linf_norm import (
    layer_linf_norms,
    linf_sensitivity_bound,
    log_linf_sensitivity_bound,
)
from lightning_gensens.functional.output_sensitivity import output_sensitivity
from lightning_gensens.functional.spectral_norm import (
    layer_spectral_norms,
    log_spectral_norm_product,
    spectral_norm_product,
)

__all__ = [
    "layer_linf_norms",
    "layer_spectral_norms",
    "linf_sensitivity_bound",
    "log_linf_sensitivity_bound",
    "log_spectral_norm_product",
    "output_sensitivity",
    "spectral_norm_product",
]
