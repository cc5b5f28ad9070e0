import torch
from torch import nn

from lightning_gensens.functional import output_sensitivity
from lightning_gensens.metrics import OutputSensitivity
from tests.helpers import run_ddp


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)).double()


def _data() -> list[torch.Tensor]:
    torch.manual_seed(1)
    return [torch.randn(n, 5, dtype=torch.float64) + 3 for n in (9, 4, 13, 6)]


def _rank_metric(rank: int, world_size: int) -> dict[str, torch.Tensor]:
    metric = OutputSensitivity(sigma=0.3, n_draws=2, seed=11)
    net = _net()
    for x in _data()[rank::world_size]:
        metric.update(net, x)
    return metric.compute()


def test_batches_split_over_two_gloo_processes_equal_one_process():
    ddp = run_ddp(_rank_metric)
    # one process, reproducing each rank's private noise stream (seed + 7919·rank), merged exactly
    net, data = _net(), _data()
    metrics = [OutputSensitivity(sigma=0.3, n_draws=2, seed=11 + 7919 * r) for r in range(2)]
    for r, metric in enumerate(metrics):
        for x in data[r::2]:
            metric.update(net, x)
    metrics[0].merge_state(metrics[1])
    single = metrics[0].compute()
    for rank_result in ddp:
        assert torch.allclose(rank_result["s"], single["s"], rtol=1e-12)
        assert torch.allclose(rank_result["input_second_moment"], single["input_second_moment"], rtol=1e-12)


def test_streaming_equals_functional_on_the_concatenated_batch():
    net, data = _net(), _data()
    metric = OutputSensitivity(sigma=0.3, seed=4)
    generator = torch.Generator().manual_seed(4)
    for x in data:
        metric.update(net, x)
    eps = [torch.randn(x.shape, generator=generator, dtype=torch.float64) for x in data]
    # the same noise, drawn batch by batch, through the functional on each batch's stacked noise
    reference = torch.cat(
        [(net(x + 0.3 * e).mean(1) - net(x).mean(1)).detach() for x, e in zip(data, eps, strict=True)]
    )
    assert torch.allclose(metric.compute()["s"], reference.var(unbiased=False), rtol=1e-10)
    assert float(output_sensitivity(net, torch.cat(data))) > 0


def test_reset_keeps_the_noise_stream_and_a_new_metric_reproduces_it():
    """The generator is seeded once (first use), never by reset(): fresh noise after a reset, same seed same run."""
    net, x = _net(), _data()[0]
    metric = OutputSensitivity(seed=3)
    metric.update(net, x)
    first = metric.compute()["s"]
    metric.reset()
    metric.update(net, x)
    assert not torch.equal(first, metric.compute()["s"])
    again = OutputSensitivity(seed=3)
    again.update(net, x)
    assert torch.equal(first, again.compute()["s"])


def test_forward_over_batches_equals_update_over_the_same_batches():
    net, data = _net(), _data()
    through_update, through_forward = OutputSensitivity(n_draws=2, seed=5), OutputSensitivity(n_draws=2, seed=5)
    for x in data:
        through_update.update(net, x)
        batch_value = through_forward(net, x)
        assert batch_value["s"] > 0
    expected, got = through_update.compute(), through_forward.compute()
    assert torch.equal(got["s"], expected["s"])
    assert torch.equal(got["input_second_moment"], expected["input_second_moment"])
