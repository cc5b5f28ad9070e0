"""Pure math of every measure: (model, tensors) -> tensors, no state and no Lightning."""

from lightning_gensens.functional.active_node_bound import (
    active_node_bound,
    active_node_counts,
    log_abs_normal_moment,
    log_psi_star,
)
from lightning_gensens.functional.agreement import agreement_rates, aline_d
from lightning_gensens.functional.attacks import adversarial_loss_increase, fgsm, pgd
from lightning_gensens.functional.confidence import (
    atc_threshold,
    average_confidence,
    average_thresholded_confidence,
    difference_of_confidences,
    predictive_entropy,
    softmax_confidence,
)
from lightning_gensens.functional.fisher_rao_norm import fisher_rao_norm, fisher_rao_norm_per_sample
from lightning_gensens.functional.input_gradient_norm import input_gradient_norm
from lightning_gensens.functional.jacobian_norm import jacobian_norm
from lightning_gensens.functional.linf_norm import (
    layer_linf_norms,
    linf_sensitivity_bound,
    log_linf_sensitivity_bound,
)
from lightning_gensens.functional.neighbours import cell_means, neighbour_distances
from lightning_gensens.functional.output_sensitivity import output_sensitivity
from lightning_gensens.functional.perturbation import (
    calibrated_log_sigma,
    perturbation_curves,
    perturbation_disagreement,
    read_curve,
)
from lightning_gensens.functional.region_sensitivity import count_activation_patterns, region_sensitivity
from lightning_gensens.functional.relative_flatness import relative_flatness
from lightning_gensens.functional.shift_test import (
    Shift,
    ShiftEstimate,
    ShiftTests,
    confusion,
    energy_test,
    input_features,
    label_shift_proportions,
    predicted_class_test,
    shift_estimate,
    shift_tests,
    transport_means,
    twin_indices,
)
from lightning_gensens.functional.spectral_norm import (
    layer_spectral_norms,
    log_spectral_norm_product,
    spectral_norm_product,
)
from lightning_gensens.functional.tangent_sensitivity import (
    tangent_sample_sensitivity,
    tangent_sensitivity_from_masks,
    tangent_sensitivity_hutchinson,
)
from lightning_gensens.functional.temperature import (
    difference_of_entropies,
    fit_temperature,
    mean_confidence,
    mean_entropy,
    scaled_difference_of_confidences,
)
from lightning_gensens.functional.transport import (
    class_prior,
    cot,
    cott,
    cott_threshold,
    label_shift_prior,
    transport_costs,
    transport_loss,
    transport_plan,
)

__all__ = [
    "Shift",
    "ShiftEstimate",
    "ShiftTests",
    "active_node_bound",
    "active_node_counts",
    "adversarial_loss_increase",
    "agreement_rates",
    "aline_d",
    "atc_threshold",
    "average_confidence",
    "calibrated_log_sigma",
    "average_thresholded_confidence",
    "cell_means",
    "class_prior",
    "confusion",
    "cot",
    "cott",
    "cott_threshold",
    "count_activation_patterns",
    "difference_of_confidences",
    "difference_of_entropies",
    "energy_test",
    "fgsm",
    "fisher_rao_norm",
    "fisher_rao_norm_per_sample",
    "fit_temperature",
    "input_features",
    "input_gradient_norm",
    "mean_confidence",
    "mean_entropy",
    "jacobian_norm",
    "layer_linf_norms",
    "label_shift_prior",
    "label_shift_proportions",
    "layer_spectral_norms",
    "linf_sensitivity_bound",
    "log_abs_normal_moment",
    "log_linf_sensitivity_bound",
    "log_psi_star",
    "log_spectral_norm_product",
    "neighbour_distances",
    "output_sensitivity",
    "perturbation_curves",
    "perturbation_disagreement",
    "pgd",
    "predicted_class_test",
    "predictive_entropy",
    "read_curve",
    "region_sensitivity",
    "relative_flatness",
    "scaled_difference_of_confidences",
    "shift_estimate",
    "shift_tests",
    "softmax_confidence",
    "spectral_norm_product",
    "tangent_sample_sensitivity",
    "tangent_sensitivity_from_masks",
    "tangent_sensitivity_hutchinson",
    "transport_costs",
    "transport_loss",
    "transport_means",
    "transport_plan",
    "twin_indices",
]
