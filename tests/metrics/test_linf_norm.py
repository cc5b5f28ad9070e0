import torch

from lightning_gensens.functional import log_linf_sensitivity_bound
from lightning_gensens.metrics import LinfNorm
from tests.helpers import run_ddp, toy_mlp


def _rank_metric(rank: int, world_size: int) -> dict[str, torch.Tensor]:
    metric = LinfNorm()
    metric.update(toy_mlp(), input_dim=5)
    return metric.compute()


def test_ddp_equals_one_process_and_functional():
    single = LinfNorm()
    single.update(toy_mlp(), input_dim=5)
    expected = single.compute()
    assert torch.allclose(expected["log_bound"], log_linf_sensitivity_bound(toy_mlp(), 5))
    for result in run_ddp(_rank_metric):
        assert torch.allclose(result["log_bound"], expected["log_bound"], rtol=1e-12)
        assert torch.allclose(result["log_prod"], expected["log_prod"], rtol=1e-12)
