import torch

from lightning_gensens.functional.relative_flatness import relative_flatness
from lightning_gensens.metrics import RelativeFlatness
from tests.helpers import run_ddp, toy_mlp


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(1)
    return [(torch.randn(n, 5, dtype=torch.float64), torch.randint(0, 3, (n,))) for n in (9, 4, 13, 6)]


def _net():
    return toy_mlp(activation=torch.nn.Tanh)  # tanh: the generic (Hutch++/basis) paths, not only Gauss–Newton


def _rank_metric(rank: int, world_size: int) -> dict[str, float]:
    metric = RelativeFlatness(seed=3)
    for x, y in _data()[rank::world_size]:
        metric.update(_net(), x, y)
    result = metric.compute()
    return {
        "kappa_sum": float(result["kappa_sum"]),
        "kappa_max": float(result["kappa_max"]),
        "lambda_max": float(result["0"]["lambda_max"]),
        "trace": float(result["2"]["trace"]),
        "rho_sum": float(result["rho_sum"]),
    }


def test_distributed_hessian_equals_one_process():
    expected = relative_flatness(_net(), _data(), generator=torch.Generator().manual_seed(3))
    for result in run_ddp(_rank_metric):
        assert abs(result["kappa_sum"] - float(expected["kappa_sum"])) < 1e-6 * float(expected["kappa_sum"])
        assert abs(result["kappa_max"] - float(expected["kappa_max"])) < 1e-6 * float(expected["kappa_max"])
        assert abs(result["lambda_max"] - float(expected["0"]["lambda_max"])) < 1e-6 * result["lambda_max"]
        assert abs(result["trace"] - float(expected["2"]["trace"])) < 1e-6 * abs(result["trace"])
        assert abs(result["rho_sum"] - float(expected["rho_sum"])) < 1e-6 * abs(result["rho_sum"])


def test_keeps_at_most_max_samples():
    metric = RelativeFlatness(max_samples=20)
    for x, y in _data():
        metric.update(_net(), x, y)
    assert sum(x.shape[0] for x, _ in metric._batches) == 20
    expected = relative_flatness(
        _net(), [(torch.cat([x for x, _ in _data()])[:20], torch.cat([y for _, y in _data()])[:20])]
    )
    assert torch.allclose(metric.compute()["kappa_sum"], expected["kappa_sum"], rtol=1e-6)
