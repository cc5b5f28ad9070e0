"""Every Metric of ``lightning_gensens.metrics.__all__`` through update, forward, pickling, device and dtype moves,
``state_dict``, reset and a 2-rank gloo reduction with different data per rank (cases in ``_tester.py``)."""

from __future__ import annotations

import copy
import gc
import pickle

import pytest
import torch
from torch import Tensor
from torchmetrics import Metric

import lightning_gensens.metrics as metrics
from tests.helpers import run_ddp
from tests.metrics._tester import (
    CASES,
    WORLD_SIZE,
    Case,
    assert_same,
    assert_states_equal,
    batches,
    ddp_rank,
    one_process,
    sequence,
)

ALL = [CASES[name] for name in metrics.__all__ if name in CASES]


@pytest.fixture(params=ALL, ids=str)
def case(request: pytest.FixtureRequest) -> Case:
    return request.param


def _filled(case: Case, dtype: torch.dtype = torch.float64, **kwargs: object) -> tuple[Metric, list, list]:
    models, calls = sequence(case, dtype)
    metric = case.metric(**kwargs)
    for args in calls:
        metric.update(*args)
    return metric, models, calls


def test_every_exported_metric_has_a_case():
    assert sorted(CASES) == sorted(metrics.__all__)


def test_compute_returns_a_tensor_or_a_dict_of_tensors(case):
    value, _, _ = _filled(case)
    result = value.compute()
    if isinstance(result, dict):
        assert result and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in result.items())
    else:
        assert isinstance(result, Tensor)


def test_forward_over_batches_equals_update_over_the_same_batches(case):
    models, calls = sequence(case)
    through_update, through_forward = case.metric(), case.metric()
    for args in calls:
        through_update.update(*args)
        batch_value = through_forward(*args)
        if not case.seeded:  # forward returns the batch's own value (a seeded metric draws on from its stream)
            alone = case.metric()
            alone.update(*args)
            assert_same(batch_value, alone.compute())
    assert through_forward.update_count == through_update.update_count == len(calls)
    assert_states_equal(through_forward, through_update)
    assert_same(through_forward.compute(), through_update.compute())


@pytest.mark.parametrize("copier", ["pickle", "clone"])
def test_pickling_and_copying_keep_the_state_and_drop_any_model(case, copier):
    metric, models, calls = _filled(case)
    copied = pickle.loads(pickle.dumps(metric)) if copier == "pickle" else metric.clone()
    assert_states_equal(copied, metric)
    assert copied.update_count == metric.update_count
    expected = metric.compute()
    if case.keeps_model:
        assert copied.model is None
        with pytest.raises(ValueError, match="no live model"):
            copied.compute()
    else:
        assert_same(copied.compute(), expected)
    # both go on identically (a private generator's state travels with the metric)
    metric.update(*calls[-1])
    copied.update(*calls[-1])
    assert_same(copied.compute(), metric.compute())


def test_device_and_dtype_moves_leave_the_model_alone(case):
    metric, models, calls = _filled(case, torch.float32, compute_with_cache=False)
    params = [(p, p.detach().clone()) for model in models for p in model.parameters()]
    before = metric.compute()
    for moved in (metric.to(torch.float64), metric.to("cpu"), metric.set_dtype(torch.float64), metric.double()):
        assert moved is metric
    for p, snapshot in params:
        assert p.dtype == torch.float32 and torch.equal(p, snapshot)
    assert all(m.training for model in models for m in model.modules())  # modes restored by every update
    assert_same(metric.compute(), before)


def test_state_dict_holds_states_only_and_no_model(case):
    metric, models, _ = _filled(case)
    assert list(metric.parameters()) == [] and list(metric.buffers()) == [] and list(metric.children()) == []
    assert list(metric.state_dict()) == []  # states are not persistent by default
    metric.persistent(True)
    state = metric.state_dict()
    assert list(state) == list(metric.metric_state)
    pointers = {p.data_ptr() for model in models for p in model.parameters()}
    stored = [v for value in state.values() for v in (value if isinstance(value, list) else [value])]
    assert all(v.data_ptr() not in pointers for v in stored)


def test_reset_gives_the_empty_state(case):
    metric, models, _ = _filled(case)
    metric.compute()
    metric.reset()
    assert metric.update_count == 0
    assert_states_equal(metric, case.metric())
    if case.keeps_model:
        assert metric.model is None
    with pytest.warns(UserWarning, match="before the ``update``"), pytest.raises(ValueError):
        metric.compute()


@pytest.mark.parametrize("case", [c for c in ALL if c.keeps_model], ids=str)
def test_a_model_held_by_reference_only_is_released(case):
    metric = case.metric()
    model = case.model(0)
    x, y = batches(0)[0]
    metric.update(*case.args(model, (x, y)))
    assert metric.model is model
    del model
    gc.collect()
    assert metric.model is None
    with pytest.raises(ValueError, match="no live model"):
        metric.compute()


def test_kwargs_reach_torchmetrics(case):
    def gather(tensor: Tensor, group: object = None) -> list[Tensor]:
        return [tensor]

    group = object()
    metric = case.metric(dist_sync_fn=gather, process_group=group, compute_with_cache=False)
    assert metric.dist_sync_fn is gather and metric.process_group is group and not metric.compute_with_cache


def test_plot_for_scalar_metrics(case):
    metric, _, _ = _filled(case)
    scalar = isinstance(metric.compute(), Tensor)
    assert (type(metric).plot is not Metric.plot) == scalar
    if scalar:
        pytest.importorskip("matplotlib")
        import matplotlib.pyplot as plt

        fig, ax = metric.plot()
        assert fig is not None and ax is not None
        plt.close(fig)


def test_ddp_with_different_data_per_rank_equals_one_process(case):
    results = run_ddp(ddp_rank, case.name)
    assert len(results) == WORLD_SIZE
    assert_same(results[1], results[0])  # every rank computes the same value
    assert_same(results[0], one_process(case), case.rtol)
    if case.expected is not None:  # weight-only metrics: the documented average over updates (hence ranks)
        expected = case.expected([case.model(r) for r in range(WORLD_SIZE)], [batches(r) for r in range(WORLD_SIZE)])
        value = results[0] if isinstance(expected, Tensor) else {k: results[0][k] for k in expected}
        assert_same(value, expected, 1e-12)


def test_copy_of_a_metric_inside_a_module_tree_is_independent(case):
    container = torch.nn.ModuleDict({"metric": case.metric()})
    copied = copy.deepcopy(container)
    assert copied["metric"] is not container["metric"]
    assert_states_equal(copied["metric"], container["metric"])
