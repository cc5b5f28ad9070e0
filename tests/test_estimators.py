import math

import torch

from lightning_gensens import estimators


def test_time_ratio_estimators_follow_their_equations():
    prev, cur, l_tr = torch.tensor([0.3, 0.5]).log().sum(), torch.tensor([0.2, 0.4]).log().sum(), torch.tensor(0.7)
    assert math.isclose(float(estimators.linf_norm(prev, cur, l_tr)), (0.15 / 0.08) ** 2 * 0.7, rel_tol=1e-6)
    assert math.isclose(float(estimators.spectral_norm(prev, cur, l_tr)), 0.15 / 0.08 * 0.7, rel_tol=1e-6)
    assert math.isclose(
        float(estimators.linf_lognorm(torch.tensor(40.0), torch.tensor(50.0), l_tr)), 0.56, rel_tol=1e-6
    )


def test_log_ratio_survives_overflow():
    out = estimators.log_ratio(
        torch.tensor(900.0, dtype=torch.float64),
        torch.tensor(899.0, dtype=torch.float64),
        torch.tensor(0.5, dtype=torch.float64),
    )
    assert math.isclose(float(out), math.e * 0.5, rel_tol=1e-12)


def test_label_free_output_sensitivity():
    out = estimators.output_sensitivity_label_free(torch.tensor(0.02), torch.tensor(1.0), 0.1, 10)
    assert math.isclose(float(out), math.sqrt(0.5 * 0.9 * 0.02 / 0.01), rel_tol=1e-6)
