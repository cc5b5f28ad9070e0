import copy
import io
import pickle

import torch
import torch.distributed as dist
from torchmetrics.utilities.distributed import gather_all_tensors

from lightning_gensens.functional.relative_flatness import relative_flatness
from lightning_gensens.metrics import RelativeFlatness
from lightning_gensens.metrics.relative_flatness import NETWORK_STATS, TRACE_METHODS
from tests.helpers import run_ddp, toy_mlp
from tests.metrics._tester import assert_same, assert_states_equal


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(1)
    return [(torch.randn(n, 5, dtype=torch.float64), torch.randint(0, 3, (n,))) for n in (9, 4, 13, 6)]


def _net():
    return toy_mlp(activation=torch.nn.Tanh)  # tanh: the generic (Hutch++/basis) paths, not only Gauss–Newton


def _rank_metric(rank: int, world_size: int) -> dict[str, float]:
    metric, net = RelativeFlatness(seed=3), _net()  # the metric keeps a weak reference: keep the model alive
    for x, y in _data()[rank::world_size]:
        metric.update(net, x, y)
    result = metric.compute()
    return {
        "kappa_sum": float(result["kappa_sum"]),
        "kappa_max": float(result["kappa_max"]),
        "lambda_max": float(result["0/lambda_max"]),
        "trace": float(result["2/trace"]),
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
    metric, net = RelativeFlatness(max_samples=20), _net()
    for x, y in _data():
        metric.update(net, x, y)
    assert sum(x.shape[0] for x in metric.inputs) == 20
    expected = relative_flatness(
        _net(), [(torch.cat([x for x, _ in _data()])[:20], torch.cat([y for _, y in _data()])[:20])]
    )
    assert torch.allclose(metric.compute()["kappa_sum"], expected["kappa_sum"], rtol=1e-6)


def test_compute_is_the_functional_result_as_one_flat_dict_of_tensors():
    net = _net()
    metric = RelativeFlatness(seed=3)
    for x, y in _data():
        metric.update(net, x, y)
    result = metric.compute()
    expected = relative_flatness(net, _data(), generator=torch.Generator().manual_seed(3))
    layers = ["0", "2", "4"]
    stats = list(expected["0"])
    assert list(result) == list(NETWORK_STATS) + [f"{layer}/{stat}" for layer in layers for stat in stats]
    assert all(isinstance(v, torch.Tensor) for v in result.values())
    for name in NETWORK_STATS:
        assert torch.equal(result[name], expected[name])
    for layer in layers:
        for stat, value in expected[layer].items():
            if stat == "trace_method":
                value = TRACE_METHODS.index(value)
            assert torch.equal(result[f"{layer}/{stat}"], torch.as_tensor(value)), (layer, stat)
    assert result["0/rho"].shape == (7,) and result["4/lanczos_iters"].dtype == torch.int64


def test_forward_keeps_the_same_first_max_samples_as_update():
    net = _net()
    through_update, through_forward = RelativeFlatness(max_samples=20, seed=3), RelativeFlatness(max_samples=20, seed=3)
    for x, y in _data():
        through_update.update(net, x, y)
        through_forward(net, x, y)
    assert [x.shape[0] for x in through_forward.inputs] == [9, 4, 7]
    assert_states_equal(through_forward, through_update)
    assert_same(through_forward.compute(), through_update.compute())


def _rank_process_groups(rank: int, world_size: int) -> dict[str, object]:
    net, data = _net(), _data()[rank::world_size]

    def kappa_sum(**kwargs: object) -> float:
        metric = RelativeFlatness(seed=3, **kwargs)
        for x, y in data:
            metric.update(net, x, y)
        return float(metric.compute()["kappa_sum"])

    pair = dist.new_group(list(range(world_size)))  # the whole world, as a group object of its own
    singles = [dist.new_group([r]) for r in range(world_size)]  # every rank takes part in creating every group
    gathered_with: list[object] = []

    def gather(tensor: torch.Tensor, group: object = None) -> list[torch.Tensor]:
        gathered_with.append(group)
        return gather_all_tensors(tensor, group=group)

    reduced_with: list[object] = []
    all_reduce = dist.all_reduce

    def recording_all_reduce(tensor: torch.Tensor, *args: object, group: object = None, **kwargs: object) -> object:
        reduced_with.append(group)
        return all_reduce(tensor, *args, group=group, **kwargs)

    dist.all_reduce = recording_all_reduce
    try:
        through_group = kappa_sum(process_group=pair)
    finally:
        dist.all_reduce = all_reduce
    return {
        "default": kappa_sum(),
        "through_group": through_group,
        "all_reduce_group": bool(reduced_with) and all(g is pair for g in reduced_with),
        "through_sync_fn": kappa_sum(process_group=pair, dist_sync_fn=gather),
        "sync_fn_group": bool(gathered_with) and all(g is pair for g in gathered_with),
        "alone": kappa_sum(process_group=singles[rank]),
    }


def test_the_hessian_is_reduced_over_process_group_through_dist_sync_fn():
    expected = float(relative_flatness(_net(), _data(), generator=torch.Generator().manual_seed(3))["kappa_sum"])
    for rank, result in enumerate(run_ddp(_rank_process_groups)):
        for key in ("default", "through_group", "through_sync_fn"):
            assert abs(result[key] - expected) < 1e-6 * expected, key
        assert result["all_reduce_group"] and result["sync_fn_group"]
        # a group of one rank: nothing is reduced, the value of that rank's own samples
        own = relative_flatness(_net(), _data()[rank::2], generator=torch.Generator().manual_seed(3))["kappa_sum"]
        assert abs(result["alone"] - float(own)) < 1e-9 * float(own)


def test_a_lightning_module_holding_the_metric_saves_copies_and_pickles():
    from tests.metrics._lightning_module import FlatnessModule

    module = FlatnessModule(_net())
    for x, y in _data():
        module.flatness.update(module, x, y)  # the metric measures the module that holds it
    state = module.state_dict()  # was a RecursionError while the metric held the module as a submodule
    assert list(state) == [f"net.{k}" for k in module.net.state_dict()]
    torch.save(state, io.BytesIO())
    copied = copy.deepcopy(module)
    assert copied.flatness.model is None and module.flatness.model is module
    assert pickle.loads(pickle.dumps(module)).flatness.model is None
    result = module.flatness.compute()
    expected = relative_flatness(module.net, _data(), generator=torch.Generator().manual_seed(3))
    assert torch.equal(result["kappa_sum"], expected["kappa_sum"])
    assert torch.equal(result["net.2/trace"], expected["2"]["trace"])
