import torch
from torch import nn

from lightning_gensens.functional.jacobian_norm import jacobian_norm
from lightning_gensens.metrics import JacobianNorm
from tests.helpers import run_ddp, toy_mlp


def _data() -> list[torch.Tensor]:
    torch.manual_seed(1)
    return [torch.randn(n, 5, dtype=torch.float64) for n in (9, 4, 13, 6)]


def _rank_metric(rank: int, world_size: int) -> torch.Tensor:
    metric = JacobianNorm()
    for x in _data()[rank::world_size]:
        metric.update(toy_mlp(), x)
    return metric.compute()


def test_ddp_equals_one_process_and_per_sample_functional():
    expected = jacobian_norm(toy_mlp(), torch.cat(_data())).mean()
    single = JacobianNorm()
    for x in _data():
        single.update(toy_mlp(), x)
    assert torch.allclose(single.compute(), expected, rtol=1e-12)
    for result in run_ddp(_rank_metric):
        assert torch.allclose(result, expected, rtol=1e-12)


def test_updates_under_inference_mode():
    metric = JacobianNorm()
    with torch.inference_mode():
        metric.update(nn.Sequential(nn.Linear(5, 3)).double(), _data()[0])
    assert metric.compute() > 0
