"""The monitor under 2-process CPU DDP (gloo, forked): state reduced over both ranks, every rank following rank 0's
plan, pools and probes of fewer batches than ranks, a rank without samples, a measure failing on one rank. Every fit
runs under a deadline (and gloo's collective timeout) that fails the test instead of hanging it."""

import math
import multiprocessing
import signal
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_gensens import GeneralizationMonitor
from lightning_gensens.callbacks.budget import Budget
from tests.callbacks.conftest import Failing, make_model, make_trainer

DDP_DEADLINE_S = 20
"""Longest one DDP fit may take here (about 2 s when nothing hangs)."""


@contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    """Fail with ``TimeoutError`` after ``seconds``, killing the processes the block started (stuck DDP ranks)."""
    before = set(multiprocessing.active_children())

    def expire(signum, frame):
        raise TimeoutError(f"the fit did not finish within {seconds} s: a rank is stuck")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        for child in set(multiprocessing.active_children()) - before:
            child.kill()
            child.join()


def _fit_ddp(tmp_path, callbacks, model, *loaders, **kwargs) -> L.Trainer:
    """Fit on 2 forked gloo ranks; gloo itself gives up on a collective after the deadline too."""
    strategy = DDPStrategy(start_method="fork", timeout=timedelta(seconds=DDP_DEADLINE_S))
    trainer = make_trainer(tmp_path, callbacks, strategy=strategy, devices=2, **kwargs)
    with _deadline(DDP_DEADLINE_S):
        trainer.fit(model, *loaders)
    return trainer


class _Warnings(L.Callback):
    """Writes the warnings each rank raised during the fit to ``<dir>/warnings-<rank>.txt``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def setup(self, trainer, pl_module, stage):
        self._catcher = warnings.catch_warnings(record=True)
        self._caught = self._catcher.__enter__()
        warnings.simplefilter("always")

    def teardown(self, trainer, pl_module, stage):
        self._catcher.__exit__(None, None, None)
        lines = [str(w.message).replace("\n", " ") for w in self._caught]
        (self.directory / f"warnings-{trainer.global_rank}.txt").write_text("\n".join(lines))


def _rank_warnings(directory: Path, rank: int) -> list[str]:
    return (directory / f"warnings-{rank}.txt").read_text().splitlines()


def test_ddp_fit_reduces_over_both_ranks(tmp_path, digits):
    """Under 2-process gloo DDP, the logged losses are those of the whole validation set and the whole probe."""
    monitor = GeneralizationMonitor(budget=None, probe_size=256)
    model = make_model(digits)
    trainer = _fit_ddp(tmp_path, [monitor], model, digits, max_epochs=2)  # rank 0's final weights copied back
    logged = trainer.callback_metrics
    for key in (
        "gensens/output_sensitivity/val",
        "gensens/linf_norm/pred_test_loss",
        "gensens/output_sensitivity/pred_test_loss",
        "gensens/spectral_norm/mae",
    ):
        assert math.isfinite(float(logged[key])), key
    probe = torch.randperm(len(digits.train_set), generator=torch.Generator().manual_seed(0))[:256]
    model.eval()
    with torch.no_grad():
        for key, (x, y) in (("test", digits.val_set.tensors), ("train", digits.train_set[probe])):
            loss = nn.functional.cross_entropy(model(x), y)
            assert math.isclose(float(logged[f"gensens/{key}_loss"]), float(loss), rel_tol=1e-5), key


def test_ddp_ranks_run_what_rank_zero_planned(tmp_path, digits, monkeypatch):
    """Each rank times its own runs, so their budgets disagree; all follow rank 0's plan, or a rank that measures
    would wait forever in a reduction the others never enter."""
    planned = Budget.plan

    def rank_dependent(self, needs):
        plan = planned(self, needs)
        return plan if torch.distributed.get_rank() == 0 else dict.fromkeys(plan, 0)

    monkeypatch.setattr(Budget, "plan", rank_dependent)
    monitor = GeneralizationMonitor(measures=["trivial", "average_confidence"], probe_size=256)
    trainer = _fit_ddp(tmp_path, [monitor], make_model(digits), digits, max_epochs=2)
    for key in ("gensens/train_loss", "gensens/average_confidence/pred_test_loss"):
        assert math.isfinite(float(trainer.callback_metrics[key])), key


def test_ddp_pools_and_probes_of_fewer_batches_than_ranks(tmp_path, digits):
    x, y = digits.val_set.tensors
    probe = DataLoader(TensorDataset(*digits.train_set[:64]), batch_size=64)  # one batch
    pool = DataLoader(TensorDataset(x[:64] + 0.5, y[:64]), batch_size=64)
    monitor = GeneralizationMonitor(
        budget=None, measures=["trivial", "atc"], probe=probe, probe_size=64, unlabeled={"one": pool}
    )
    model = make_model(digits)
    trainer = _fit_ddp(tmp_path, [monitor], model, digits, max_epochs=2)
    logged = trainer.callback_metrics
    for key in ("gensens/pool/one/atc/pred_test_error", "gensens/trivial/pred_test_loss"):
        assert math.isfinite(float(logged[key])), key
    model.eval()
    with torch.no_grad():  # both ranks' halves of the one batch, reduced exactly
        for key, (inputs, labels) in (("pool/one/test", pool.dataset.tensors), ("train", probe.dataset.tensors)):
            loss = nn.functional.cross_entropy(model(inputs), labels)
            assert math.isclose(float(logged[f"gensens/{key}_loss"]), float(loss), rel_tol=1e-5), key


class _ShiftTestState(L.Callback):
    """Writes each rank's last shift-test prediction and how many reference distances it computed to
    ``<dir>/shift-<rank>.txt``."""

    def __init__(self, directory: Path, monitor: GeneralizationMonitor) -> None:
        self.directory, self.monitor = directory, monitor

    def on_fit_end(self, trainer, pl_module):
        measure = next(m for m in self.monitor.measures if m.name == "shift_test")
        row = self.monitor.history[-1]
        distances = 0 if measure._distances is None else len(measure._distances[1])
        predicted = row["gensens/pool/noisy/shift_gated/pred_test_error"]
        (self.directory / f"shift-{trainer.global_rank}.txt").write_text(f"{distances} {predicted!r}")


def test_ddp_the_shift_test_reads_every_rank_s_output_layer_inputs(tmp_path, digits):
    x, y = digits.val_set.tensors
    pool = DataLoader(TensorDataset(x + torch.randn(x.shape, generator=torch.Generator().manual_seed(0)), y), 64)
    monitor = GeneralizationMonitor(budget=None, measures=["shift_test"], probe_size=128, unlabeled={"noisy": pool})
    _fit_ddp(tmp_path, [monitor, _ShiftTestState(tmp_path, monitor)], make_model(digits), digits, max_epochs=2)
    ranks = [(tmp_path / f"shift-{rank}.txt").read_text().split() for rank in range(2)]
    assert ranks[0] == ranks[1]  # the same prediction on both ranks, from the gathered samples
    assert int(ranks[0][0]) == len(digits.val_set) and 0 <= float(ranks[0][1]) <= 1  # every validation sample


def test_ddp_a_measure_failing_on_one_rank_is_switched_off_on_both(tmp_path, digits):
    monitor = GeneralizationMonitor(budget=None, measures=[Failing(ranks=(1,)), "trivial"], probe_size=64)
    trainer = _fit_ddp(tmp_path, [_Warnings(tmp_path), monitor], make_model(digits), digits, max_epochs=2)
    logged = trainer.callback_metrics
    assert math.isfinite(float(logged["gensens/trivial/pred_test_loss"]))
    assert not any(k.startswith("gensens/failing") for k in logged)
    said = [s for rank in (0, 1) for s in _rank_warnings(tmp_path, rank) if "failing raised" in s]
    assert len(said) == 1 and said[0].startswith("[rank: 1] GeneralizationMonitor: failing raised RuntimeError")


def test_ddp_a_rank_without_samples_neither_hangs_nor_loses_the_scores(tmp_path, digits):
    x, y = digits.val_set.tensors
    single = DataLoader(TensorDataset(x[:1], y[:1]), batch_size=1)  # rank 1 gets none of it
    monitor = GeneralizationMonitor(
        budget=None, measures=["trivial", "linf_norm"], probe_size=1, unlabeled={"single": single}
    )  # rank 1's probe shard is empty too
    model = make_model(digits)
    trainer = _fit_ddp(tmp_path, [monitor], model, digits, max_epochs=2)
    logged = trainer.callback_metrics
    probe = torch.randperm(len(digits.train_set), generator=torch.Generator().manual_seed(0))[:1]
    model.eval()
    with torch.no_grad():
        for key, (inputs, labels) in (("pool/single/test", (x[:1], y[:1])), ("train", digits.train_set[probe])):
            loss = nn.functional.cross_entropy(model(inputs), labels)
            assert math.isclose(float(logged[f"gensens/{key}_loss"]), float(loss), rel_tol=1e-5), key
    assert math.isfinite(float(logged["gensens/linf_norm/pred_test_loss"]))
    assert "gensens/trivial/pred_test_loss" not in logged  # rank 1 fed its train split nothing: not computed


def test_the_deadline_fails_instead_of_hanging():
    with pytest.raises(TimeoutError, match="within 1 s"), _deadline(1):
        signal.pause()
