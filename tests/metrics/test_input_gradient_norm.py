import pytest
import torch

from lightning_gensens.functional.input_gradient_norm import input_gradient_norm
from lightning_gensens.metrics import InputGradientNorm
from tests.helpers import run_ddp, toy_mlp


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(1)
    return [(torch.randn(n, 5, dtype=torch.float64), torch.randint(0, 3, (n,))) for n in (9, 4, 13, 6)]


def _rank_metric(rank: int, world_size: int) -> dict[float, torch.Tensor]:
    metric = InputGradientNorm(q=(1, 2))
    for x, y in _data()[rank::world_size]:
        metric.update(toy_mlp(), x, y)
    return metric.compute()


def test_ddp_equals_one_process_and_functional():
    x, y = (torch.cat(t) for t in zip(*_data(), strict=True))
    expected = input_gradient_norm(toy_mlp(), x, y, q=(1, 2)).mean(1)
    for result in run_ddp(_rank_metric):
        assert torch.allclose(result[1.0], expected[0], rtol=1e-12)
        assert torch.allclose(result[2.0], expected[1], rtol=1e-12)


def test_keeps_samples_for_attacks_and_needs_labels():
    metric = InputGradientNorm(keep=10)
    for x, y in _data():
        metric.update(toy_mlp(), x, y)
    kept_x, kept_y = metric.kept()
    assert kept_x.shape == (10, 5) and torch.equal(kept_y, torch.cat([y for _, y in _data()])[:10])
    with pytest.raises(ValueError, match="needs labels"):
        metric.update(toy_mlp(), _data()[0][0], None)
    with pytest.raises(ValueError, match="q"):
        InputGradientNorm(q=(0.5,))
