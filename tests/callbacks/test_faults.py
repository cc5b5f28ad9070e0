"""A fit never dies because of the monitor: measure callbacks side by side, a reused monitor, any exception while
measuring, bad pools, step-based validation, capped measures. Faults across DDP ranks: ``test_distributed.py``."""

import math
import signal
import sys

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset
from torchmetrics import MeanMetric

from lightning_gensens import GeneralizationMonitor, JacobianNorm, OutputSensitivity, measures
from lightning_gensens.callbacks.budget import Budget
from lightning_gensens.measures import Measure
from lightning_gensens.models import Classifier
from tests.callbacks.conftest import Failing, make_model, make_trainer


def _hooked(model: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


# -- 1. measure callbacks side by side ------------------------------------------------------------------------------
def test_two_measure_callbacks_side_by_side_measure_as_each_alone(tmp_path, digits):
    callbacks = [OutputSensitivity(), JacobianNorm()]
    make_trainer(tmp_path / "budget", callbacks, max_epochs=2).fit(make_model(digits), digits)
    for callback in callbacks:  # budget trials: the other's 16-sample forward passes are never taken
        assert any(f"{callback.shared_prefix}/test_loss" in row for row in callback.history)

    def logged(directory, *callbacks):
        trainer = make_trainer(tmp_path / directory, callbacks, max_epochs=1, limit_train_batches=4)
        trainer.fit(make_model(digits), digits)
        return trainer.callback_metrics

    pair = logged("pair", OutputSensitivity(probe_size=64, budget=None), JacobianNorm(probe_size=64, budget=None))
    alone = logged("alone", OutputSensitivity(probe_size=64, budget=None))
    for key in ("test_loss", "val", "train"):
        assert float(pair[f"gensens/output_sensitivity/{key}"]) == float(alone[f"gensens/output_sensitivity/{key}"])


# -- 2. a reused monitor ---------------------------------------------------------------------------------------------
def test_a_reused_monitor_reports_each_fit_alone_and_validate_adds_nothing(tmp_path, digits):
    monitor = GeneralizationMonitor(budget=None, measures=["linf_norm", "trivial"], probe_size=64)
    make_trainer(tmp_path / "a", [monitor], max_epochs=2).fit(make_model(digits), digits)
    other = make_model(digits, seed=1, hidden=(16,))
    trainer = make_trainer(tmp_path / "b", [monitor], max_epochs=2)
    trainer.fit(other, digits)
    assert {r["estimator"]: r["epochs"] for r in monitor.mae_table} == {"linf_norm": 1, "linf_lognorm": 1, "trivial": 2}
    assert [row["epoch"] for row in monitor.history] == [0, 1]
    assert "gensens/linf_norm/pred_test_loss" not in monitor.history[0]  # nothing left from the other network

    table, history = monitor.report.table(), list(monitor.history)
    previous = monitor.measures[0].state_dict()

    class Testable(Classifier):
        test_step = Classifier.validation_step

    (validated,) = trainer.validate(other, digits)
    trainer.test(Testable(other.net), digits.val_dataloader())
    assert "gensens/trivial/pred_test_loss" in validated
    assert monitor.report.table() == table and monitor.history == history  # validate and test add nothing
    assert monitor.measures[0].state_dict() == previous

    ckpt = trainer.checkpoint_callback.best_model_path  # loaded after setup: the checkpoint's fit continues
    resumed = make_model(digits, seed=1, hidden=(16,))
    make_trainer(tmp_path / "c", [monitor], max_epochs=3).fit(resumed, digits, ckpt_path=ckpt)
    assert {r["estimator"]: r["epochs"] for r in monitor.mae_table} == {"linf_norm": 2, "linf_lognorm": 2, "trivial": 3}


# -- 3. every exit path restores the model ---------------------------------------------------------------------------
class _Untouched(L.Callback):
    """Notes, before the monitor measures at the end of a training epoch, the RNG state and the modes."""

    def on_train_epoch_end(self, trainer, pl_module):
        self.rng = torch.get_rng_state()
        self.modes = [m.training for m in pl_module.modules()]


class _Raising(Failing):
    """Draws from the global RNG and switches grad mode off before raising, as a careless measure might."""

    def update(self, metric, record, net):
        torch.rand(3)
        torch.set_grad_enabled(False)
        raise self.error()


@pytest.fixture
def _sigint():
    """Lightning ignores SIGINT after a KeyboardInterrupt; put the handler back."""
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


@pytest.mark.usefixtures("_sigint")
@pytest.mark.parametrize(
    "error, raised",
    [
        (KeyboardInterrupt, SystemExit),  # Lightning exits after a graceful shutdown
        (lambda: SystemExit(3), SystemExit),
        (lambda: torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)"), None),  # a measure's: caught
    ],
    ids=["KeyboardInterrupt", "SystemExit", "OutOfMemoryError"],
)
def test_an_exception_while_measuring_leaves_the_model_as_it_was(tmp_path, digits, error, raised):
    pool = DataLoader(TensorDataset(digits.val_set.tensors[0][:64]), batch_size=32)
    monitor = GeneralizationMonitor(budget=None, measures=[_Raising(error), "trivial"], probe_size=64, unlabeled=pool)
    spy = _Untouched()
    model = make_model(digits)
    trainer = make_trainer(tmp_path, [spy, monitor], max_epochs=1, limit_val_batches=0)  # measured in train mode
    if raised is None:
        with pytest.warns(UserWarning, match="failing raised OutOfMemoryError"):
            trainer.fit(model, digits)
    else:
        with pytest.raises(raised):
            trainer.fit(model, digits)
    assert not _hooked(model)
    assert [m.training for m in model.modules()] == spy.modes and all(spy.modes)
    assert torch.equal(torch.get_rng_state(), spy.rng) and torch.is_grad_enabled()


@pytest.mark.usefixtures("_sigint")
def test_an_interrupt_in_a_validation_batch_leaves_no_hook(tmp_path, digits):
    monitor = GeneralizationMonitor(budget=None, measures=[Failing(KeyboardInterrupt)], probe_size=64)
    model = make_model(digits)
    with pytest.raises(SystemExit):
        make_trainer(tmp_path, [monitor], max_epochs=1).fit(model, digits)
    assert not _hooked(model) and torch.is_grad_enabled()


def test_out_of_memory_in_a_measure_frees_the_cache_and_training_goes_on(tmp_path, digits, monkeypatch):
    emptied = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(sys._getframe(1).f_globals["__name__"]))
    oom = Failing(lambda: torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)"))
    monitor = GeneralizationMonitor(budget=None, measures=[oom, "trivial"], probe_size=64)
    with pytest.warns(UserWarning, match="failing raised OutOfMemoryError") as caught:
        trainer = make_trainer(tmp_path, [monitor], max_epochs=2)
        trainer.fit(make_model(digits), digits)
    assert sum("failing" in str(w.message) for w in caught) == 1
    assert emptied.count("lightning_gensens.callbacks.session") == 1
    assert trainer.current_epoch == 2 and [m.name for m in monitor.active_measures] == ["trivial"]
    assert math.isfinite(float(trainer.callback_metrics["gensens/trivial/pred_test_loss"]))


# -- 4. bad pools ----------------------------------------------------------------------------------------------------
def test_bad_pools_are_skipped_or_left_unscored_with_one_warning_each(tmp_path, digits):
    x, y = digits.val_set.tensors[0][:96], digits.val_set.tensors[1][:96]
    nan = x.clone()
    nan[5, 3] = float("nan")
    pools = {
        "range": DataLoader(TensorDataset(x, y + 20), batch_size=32),  # labels of another, larger set of classes
        "dtype": DataLoader(TensorDataset(x, y.int()), batch_size=32),
        "classes": DataLoader(TensorDataset(x, torch.full((96, 5), 0.2)), batch_size=32),  # 5-class probabilities
        "nan": DataLoader(TensorDataset(nan, y), batch_size=32),
        "empty": DataLoader(TensorDataset(x[:0], y[:0]), batch_size=32),
        "good": DataLoader(TensorDataset(x, y), batch_size=32),
    }
    monitor = GeneralizationMonitor(budget=None, measures=["trivial", "atc"], probe_size=64, unlabeled=pools)
    with pytest.warns(UserWarning) as caught:
        make_trainer(tmp_path, [monitor], max_epochs=2).fit(make_model(digits), digits)
    said = [str(w.message) for w in caught if "pool '" in str(w.message)]
    reasons = {"range": "outside the model's classes", "dtype": "cannot score", "classes": "cannot score"}
    reasons |= {"nan": "NaN or Inf", "empty": "no samples"}
    for pool, reason in reasons.items():
        assert sum(f"pool '{pool}'" in s and reason in s for s in said) == 1, pool
    assert not any("pool 'good'" in s for s in said)
    last = monitor.history[-1]
    for pool in ("range", "dtype", "classes"):  # unscored, but predicted
        assert f"gensens/pool/{pool}/test_loss" not in last and f"gensens/pool/{pool}/trivial/pred_test_loss" in last
    assert not any(k.startswith(("gensens/pool/nan/", "gensens/pool/empty/")) for k in last)
    assert {"gensens/pool/good/test_loss", "gensens/pool/good/atc/pred_test_error"} <= set(last)


# -- 5. step-based validation ----------------------------------------------------------------------------------------
class _Endless(IterableDataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __iter__(self):
        g = torch.Generator().manual_seed(0)
        while True:
            yield self.dataset[int(torch.randint(len(self.dataset), (), generator=g))]


def test_step_based_validation_on_an_endless_stream_measures_every_run(tmp_path, digits):
    stream = DataLoader(_Endless(digits.train_set), batch_size=32)
    monitor = GeneralizationMonitor(budget=None, measures=["trivial"], probe_size=64)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=-1, max_steps=30, val_check_interval=10)
    trainer.fit(make_model(digits), stream, digits.val_dataloader())
    assert len(monitor.history) == 3


def test_a_fit_that_may_never_measure_says_so_at_its_start(tmp_path, digits):
    stream = DataLoader(_Endless(digits.train_set), batch_size=32)
    monitor = GeneralizationMonitor(budget=None, measures=["trivial"], probe_size=64)
    with pytest.warns(UserWarning, match="validates at the end of each epoch only.*val_check_interval"):
        make_trainer(tmp_path, [monitor], max_epochs=-1, max_steps=3).fit(
            make_model(digits), stream, digits.val_dataloader()
        )
    monitor = GeneralizationMonitor(budget=None, measures=["trivial"], probe_size=64, every_n_epochs=3)
    with pytest.warns(UserWarning, match="will measure nothing: this fit has at most 2 validation runs left"):
        make_trainer(tmp_path / "n", [monitor], max_epochs=-1, max_steps=25, val_check_interval=10).fit(
            make_model(digits), stream, digits.val_dataloader()
        )
    assert monitor.history == []


# -- 6. caps take a seeded random subset -----------------------------------------------------------------------------
def test_a_capped_measure_takes_a_seeded_random_subset_of_the_validation_stream(tmp_path, digits, monkeypatch):
    runs: list[list[torch.Tensor]] = []

    class Spy(Measure):
        name = "spy"

        def make_metric(self, net, settings):
            return MeanMetric()

        def update(self, metric, record, net):
            runs[-1].append(record.x)
            metric.update(record.logits.mean())

    class Runs(L.Callback):
        def on_validation_epoch_start(self, trainer, pl_module):
            runs.append([])

    monkeypatch.setattr(Budget, "plan", lambda self, needs: dict.fromkeys(needs, 40))
    x, y = digits.train_set.tensors
    probe = TensorDataset(x + 1000.0, y)  # far from every validation sample
    monitor = GeneralizationMonitor(measures=[Spy()], probe=probe, probe_size=64)
    trainer = make_trainer(tmp_path, [Runs(), monitor], max_epochs=3, num_sanity_val_steps=0)
    trainer.fit(make_model(digits), digits)
    val = digits.val_set.tensors[0]
    chosen = []
    for run in runs:
        distances = torch.cdist(torch.cat(run), val, compute_mode="donot_use_mm_for_euclid_dist")
        chosen.append(distances.argmin(1)[distances.min(1).values == 0])
    first, second, third = chosen
    assert torch.equal(first, torch.arange(40))  # before a run saw the split: its first samples
    assert len(second) == 40 and torch.equal(second, third)  # seeded: the same subset every run
    assert int(second.max()) >= 256  # spread over the stream's batches (of 256), not its head


# -- 7. our own measures' programming errors fail the suite -------------------------------------------------------
def _broken(self, metric, record, net):
    return record.missing  # an AttributeError: a bug of ours, not the user's data


def test_a_bug_in_our_own_measure_fails_the_suite(tmp_path, digits, monkeypatch):
    monkeypatch.setattr(measures.AverageConfidence, "update", _broken)
    monitor = GeneralizationMonitor(budget=None, measures=["average_confidence", "trivial"], probe_size=64)
    with pytest.raises(AttributeError, match="missing"):
        make_trainer(tmp_path, [monitor], max_epochs=1, limit_train_batches=2).fit(make_model(digits), digits)


@pytest.mark.lenient
def test_a_bug_in_our_own_measure_switches_it_off_for_users(tmp_path, digits, monkeypatch):
    monkeypatch.setattr(measures.AverageConfidence, "update", _broken)
    monitor = GeneralizationMonitor(budget=None, measures=["average_confidence", "trivial"], probe_size=64)
    with pytest.warns(UserWarning, match="average_confidence raised AttributeError"):
        make_trainer(tmp_path, [monitor], max_epochs=1, limit_train_batches=2).fit(make_model(digits), digits)
    assert [m.name for m in monitor.active_measures] == ["trivial"]
