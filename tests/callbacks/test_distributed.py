"""The monitor under 2-process CPU DDP (gloo, forked): state reduced over both ranks, every rank following rank 0's
plan. gloo's collective timeout is short, so a rank left alone in a reduction fails the test instead of hanging."""

import math

import torch
from lightning.pytorch.strategies import DDPStrategy
from torch import nn

from lightning_gensens import GeneralizationMonitor
from lightning_gensens.callbacks.budget import Budget
from tests.callbacks.conftest import make_model, make_trainer
from tests.helpers import COLLECTIVE_TIMEOUT


def _ddp() -> DDPStrategy:
    return DDPStrategy(start_method="fork", timeout=COLLECTIVE_TIMEOUT)


def test_ddp_fit_reduces_over_both_ranks(tmp_path, digits):
    """Under 2-process gloo DDP, the logged losses are those of the whole validation set and the whole probe."""
    monitor = GeneralizationMonitor(budget=None, probe_size=256)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=2, strategy=_ddp(), devices=2)
    model = make_model(digits)
    trainer.fit(model, digits)  # ddp_fork copies rank 0's final weights back into `model`
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
    trainer = make_trainer(tmp_path, [monitor], max_epochs=2, strategy=_ddp(), devices=2)
    trainer.fit(make_model(digits), digits)
    for key in ("gensens/train_loss", "gensens/average_confidence/pred_test_loss"):
        assert math.isfinite(float(trainer.callback_metrics[key])), key
