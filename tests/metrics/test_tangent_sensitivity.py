import pytest
import torch

from lightning_gensens.functional.active_node_bound import relu_preactivations
from lightning_gensens.functional.tangent_sensitivity import tangent_sample_sensitivity
from lightning_gensens.metrics import TangentSensitivity
from lightning_gensens.models import small_cnn
from tests.helpers import run_ddp, toy_mlp


def _data() -> list[torch.Tensor]:
    torch.manual_seed(1)
    return [torch.randn(n, 5, dtype=torch.float64) for n in (9, 4, 13, 6)]


def _rank_metric(rank: int, world_size: int) -> dict[str, torch.Tensor]:
    net, metric = toy_mlp(), TangentSensitivity()
    for x in _data()[rank::world_size]:
        metric.update(net, x, relu_preactivations(net, x))
    return metric.compute()


def test_exact_from_masks_ddp_equals_one_process_and_dense_functional():
    expected = tangent_sample_sensitivity(toy_mlp(), torch.cat(_data()), method="exact").mean()
    for result in run_ddp(_rank_metric):
        assert torch.allclose(result["mean"], expected, rtol=1e-12)
        assert result["stderr"] == 0


def test_hutchinson_reports_a_standard_error_that_covers_the_truth():
    torch.manual_seed(0)
    net = small_cnn(1, 6, 3, width=3, batch_norm=True).double().eval()
    x = torch.randn(16, 1, 6, 6, dtype=torch.float64)
    metric = TangentSensitivity(method="hutchinson", n_probes=16, seed=1)
    metric.update(net, x)
    out = metric.compute()
    dense = tangent_sample_sensitivity(
        net, x, method="hutchinson", n_probes=256, generator=torch.Generator().manual_seed(9)
    ).mean()
    assert out["stderr"] > 0
    assert abs(out["mean"] - dense) < 5 * out["stderr"] + 0.02 * dense


def test_hutchinson_forward_over_batches_equals_update_over_the_same_batches():
    torch.manual_seed(0)
    net = small_cnn(1, 6, 3, width=3, batch_norm=True).double().eval()
    batches = [torch.randn(n, 1, 6, 6, dtype=torch.float64) for n in (5, 3, 4)]
    through_update = TangentSensitivity(method="hutchinson", n_probes=3, seed=2)
    through_forward = TangentSensitivity(method="hutchinson", n_probes=3, seed=2)
    for x in batches:
        through_update.update(net, x)
        through_forward(net, x)
    expected, got = through_update.compute(), through_forward.compute()
    assert torch.equal(got["mean"], expected["mean"]) and torch.equal(got["stderr"], expected["stderr"])
    assert expected["stderr"] > 0


def test_arguments():
    with pytest.raises(ValueError, match="method"):
        TangentSensitivity(method="dense")
    with pytest.raises(ValueError, match="n_probes"):
        TangentSensitivity(n_probes=1)
