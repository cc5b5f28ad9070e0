import torch

from lightning_gensens.functional import log_spectral_norm_product
from lightning_gensens.metrics import SpectralNorm
from tests.helpers import run_ddp, toy_mlp


def _rank_metric(rank: int, world_size: int) -> torch.Tensor:
    metric = SpectralNorm()
    metric.update(toy_mlp())
    return metric.compute()


def test_ddp_equals_one_process_and_functional():
    expected = log_spectral_norm_product(toy_mlp())
    for result in run_ddp(_rank_metric):
        assert torch.allclose(result, expected, rtol=1e-12)
