"""The perturbation-disagreement Metric: batches of a split and its concatenation meet the same perturbed networks,
so streaming equals the functional on all samples; logits it cannot read are refused."""

import pytest
import torch

from lightning_gensens.functional import perturbation_curves
from lightning_gensens.metrics import PerturbationDisagreement
from tests.helpers import toy_mlp

GRID = (0.05, 0.3, 1.0, 3.0)


def test_streaming_over_batches_equals_the_curves_of_the_concatenated_split():
    net = toy_mlp()
    x = torch.randn(37, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    metric = PerturbationDisagreement(GRID, draws=3, seed=5)
    for part in x.split(10):
        metric.update(net, part, net(part).detach())
    computed = metric.compute()
    disagreement, cross_entropy = perturbation_curves(net, x, GRID, draws=3, seed=5)
    assert torch.allclose(computed["disagreement"], disagreement, atol=1e-15)
    assert torch.allclose(computed["cross_entropy"], cross_entropy, rtol=1e-12)
    assert float(computed["samples"]) == 37


def test_bad_logits_and_arguments_are_refused():
    net = toy_mlp()
    x = torch.randn(4, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="K ≥ 2"):
        PerturbationDisagreement(GRID).update(net, x, net(x)[:, :1].detach())
    with pytest.raises(ValueError, match="draws"):
        PerturbationDisagreement(GRID, draws=0)
    with pytest.raises(ValueError, match="before any update"):
        PerturbationDisagreement(GRID).compute()
