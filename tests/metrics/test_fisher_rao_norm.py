import torch

from lightning_gensens.functional.fisher_rao_norm import fisher_rao_norm
from lightning_gensens.metrics import FisherRaoNorm
from tests.helpers import run_ddp, toy_mlp


def _data() -> list[torch.Tensor]:
    torch.manual_seed(1)
    return [torch.randn(n, 5, dtype=torch.float64) for n in (9, 4, 13, 6)]


def _rank_metric(rank: int, world_size: int) -> torch.Tensor:
    metric = FisherRaoNorm()
    net = toy_mlp()
    for x in _data()[rank::world_size]:
        metric.update(net(x))
    return metric.compute()


def test_ddp_equals_one_process_and_functional():
    net = toy_mlp()
    expected = fisher_rao_norm(net, torch.cat(_data()))
    for result in run_ddp(_rank_metric):
        assert torch.allclose(result, expected, rtol=1e-12)
