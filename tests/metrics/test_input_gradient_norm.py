import pytest
import torch

from lightning_gensens.functional.input_gradient_norm import input_gradient_norm
from lightning_gensens.metrics import InputGradientNorm
from tests.helpers import run_ddp, toy_mlp


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(1)
    return [(torch.randn(n, 5, dtype=torch.float64), torch.randint(0, 3, (n,))) for n in (9, 4, 13, 6)]


def _rank_metric(rank: int, world_size: int) -> dict[str, torch.Tensor]:
    metric = InputGradientNorm(q=(1, 2))
    for x, y in _data()[rank::world_size]:
        metric.update(toy_mlp(), x, y)
    return metric.compute()


def test_ddp_equals_one_process_and_functional():
    x, y = (torch.cat(t) for t in zip(*_data(), strict=True))
    expected = input_gradient_norm(toy_mlp(), x, y, q=(1, 2)).mean(1)
    for result in run_ddp(_rank_metric):
        assert list(result) == ["q1", "q2"]
        assert torch.allclose(result["q1"], expected[0], rtol=1e-12)
        assert torch.allclose(result["q2"], expected[1], rtol=1e-12)


def _rank_kept(rank: int, world_size: int) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    metric, net = InputGradientNorm(keep=5 if rank == 0 else 0), toy_mlp()  # rank 1 keeps nothing at all
    for x, y in _data()[rank::world_size]:
        metric.update(net, x, y)
    value = metric.compute()
    kept_x, kept_y = metric.kept() if rank == 0 else (torch.zeros(0), torch.zeros(0))
    return value, kept_x, kept_y


def test_kept_samples_stay_on_their_rank_through_a_ddp_compute():
    x, y = (torch.cat(t) for t in zip(*_data(), strict=True))
    expected = input_gradient_norm(toy_mlp(), x, y, q=(1, 2)).mean(1)
    (value, kept_x, kept_y), (other, _, _) = run_ddp(_rank_kept)
    for result in (value, other):
        assert torch.allclose(result["q1"], expected[0], rtol=1e-12)
        assert torch.allclose(result["q2"], expected[1], rtol=1e-12)
    assert torch.equal(kept_x, _data()[0][0][:5]) and torch.equal(kept_y, _data()[0][1][:5])
    assert kept_y.dtype == torch.int64


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
