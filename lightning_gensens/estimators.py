"""Predicted test loss (or error) of each measure (the papers' estimators): pure formulas, one function each.

Every estimator maps a measure's values and a training-probe quantity ``train_value`` (loss or error at the same
epoch) to a prediction of the same quantity on unseen data. Ratios of quantities that overflow are taken in log
space.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def ratio(value_test: Tensor, value_train: Tensor, train_value: Tensor) -> Tensor:
    """m(X_te) / m(X_tr) · l_tr: the ratio rule of eq. 7 and of the follow-up paper."""
    return value_test / value_train * train_value


def log_ratio(log_test: Tensor, log_train: Tensor, train_value: Tensor) -> Tensor:
    """exp(log m_te − log m_tr) · l_tr, for measures known by their logarithm (eq. 6)."""
    return torch.exp(log_test - log_train) * train_value


def linf_norm(log_prod_previous: Tensor, log_prod_current: Tensor, train_value: Tensor) -> Tensor:
    """(∏w_i^{(t−1)})² / (∏w_i^{(t)})² · l_tr(t), Daróczy eq. 5."""
    return torch.exp(2 * (log_prod_previous - log_prod_current)) * train_value


def linf_lognorm(log_sens_previous: Tensor, log_sens_current: Tensor, train_value: Tensor) -> Tensor:
    """log Sens¹(θ^{(t−1)}) / log Sens¹(θ^{(t)}) · l_tr(t), Daróczy §5 ("log-norm")."""
    return log_sens_previous / log_sens_current * train_value


def spectral_norm(log_prod_previous: Tensor, log_prod_current: Tensor, train_value: Tensor) -> Tensor:
    """∏‖W^{(t−1)}‖_σ / ∏‖W^{(t)}‖_σ · l_tr(t), follow-up paper l⁶."""
    return torch.exp(log_prod_previous - log_prod_current) * train_value


def output_sensitivity_label_free(s: Tensor, input_second_moment: Tensor, sigma: float, num_classes: int) -> Tensor:
    """Forouzesh eq. 9 with Σ neglected: √(½·(K−1)/K·S·σ_x²/σ_ε²); needs no labels and no training loss."""
    return (0.5 * (num_classes - 1) / num_classes * s * input_second_moment / sigma**2).sqrt()


def skill(mae: float, mae_trivial: float) -> float:
    """1 − MAE/MAE(trivial), the skill of an estimator over trivial's ("test = reference"); NaN where undefined."""
    if not (math.isfinite(mae) and math.isfinite(mae_trivial)) or mae_trivial <= 0:
        return math.nan
    return 1.0 - mae / mae_trivial
