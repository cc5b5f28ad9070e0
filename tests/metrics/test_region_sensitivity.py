import pytest
import torch

from lightning_gensens.functional.active_node_bound import relu_preactivations
from lightning_gensens.functional.region_sensitivity import count_activation_patterns, region_sensitivity
from lightning_gensens.metrics import RegionSensitivity
from tests.helpers import run_ddp, toy_mlp


def _data() -> list[torch.Tensor]:
    torch.manual_seed(1)
    return [torch.randn(n, 5, dtype=torch.float64) for n in (9, 4, 13, 6)]


def _rank_metric(rank: int, world_size: int) -> dict[str, torch.Tensor]:
    net, metric = toy_mlp(), RegionSensitivity(mode="soft", temperature=0.5)
    for x in _data()[rank::world_size]:
        metric.update(net, relu_preactivations(net, x))
    return metric.compute()


def test_ddp_equals_one_process_and_functional():
    net, x = toy_mlp(), torch.cat(_data())
    expected_soft = region_sensitivity(net, x, mode="soft", temperature=0.5)
    for result in run_ddp(_rank_metric):
        assert torch.allclose(result["hard"], region_sensitivity(net, x, mode="hard"), rtol=1e-12)
        assert torch.allclose(result["soft"], expected_soft, rtol=1e-5)  # pre-activations kept in float32
        assert result["patterns"] == count_activation_patterns(net, x)


def test_soft_with_reference_weighs_over_the_union_of_patterns():
    net = toy_mlp()
    train, val = RegionSensitivity(mode="soft"), RegionSensitivity(mode="soft")
    x_tr, x_te = torch.cat(_data()[:2]), torch.cat(_data()[2:])
    train.update(net, relu_preactivations(net, x_tr))
    val.update(net, relu_preactivations(net, x_te))
    value = val.soft(reference=train.patterns())
    assert torch.allclose(value, region_sensitivity(net, x_te, mode="soft", reference=x_tr), rtol=1e-5)


def test_arguments():
    with pytest.raises(ValueError, match="mode"):
        RegionSensitivity(mode="medium")
    with pytest.raises(ValueError, match="soft"):
        RegionSensitivity().soft()
