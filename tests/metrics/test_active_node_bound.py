import torch

from lightning_gensens.functional.active_node_bound import active_node_bound, relu_preactivations
from lightning_gensens.metrics import ActiveNodeBound
from tests.helpers import run_ddp, toy_mlp


def _data() -> list[torch.Tensor]:
    torch.manual_seed(1)
    return [torch.randn(n, 5, dtype=torch.float64) for n in (9, 4, 13, 6)]


def _rank_metric(rank: int, world_size: int) -> dict[str, torch.Tensor]:
    net, metric = toy_mlp(), ActiveNodeBound(num_layers=3)
    for x in _data()[rank::world_size]:
        metric.update(relu_preactivations(net, x))
    return metric.compute()


def test_ddp_equals_one_process_and_functional():
    expected = active_node_bound(toy_mlp(), torch.cat(_data()))
    counts = torch.cat(
        [(torch.cat([h.flatten(1) for h in relu_preactivations(toy_mlp(), x)], 1) > 0).sum(1) for x in _data()]
    ).double()
    for result in run_ddp(_rank_metric):
        assert torch.allclose(result["log_psi"], expected, rtol=1e-12)
        assert torch.allclose(result["mu"], counts.mean()) and torch.allclose(result["sigma"], counts.std(False))
