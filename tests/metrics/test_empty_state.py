"""Every Metric refuses to compute on an empty split: an error, never a silent NaN."""

import pytest
import torch

from lightning_gensens import metrics

EMPTY = [
    metrics.ActiveNodeBound(num_layers=3),
    metrics.FisherRaoNorm(),
    metrics.InputGradientNorm(),
    metrics.JacobianNorm(),
    metrics.LinfNorm(),
    metrics.OutputSensitivity(),
    metrics.RegionSensitivity(),
    metrics.RelativeFlatness(),
    metrics.SpectralNorm(),
    metrics.TangentSensitivity(),
]


@pytest.mark.parametrize("metric", EMPTY, ids=lambda m: type(m).__name__)
def test_compute_before_update_raises(metric):
    with pytest.warns(UserWarning, match="before the ``update``"), pytest.raises(ValueError):
        metric.compute()


def test_spectral_norm_refuses_non_finite_weights():
    net = torch.nn.Linear(3, 2)
    with torch.no_grad():
        net.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        metrics.SpectralNorm().update(net)
