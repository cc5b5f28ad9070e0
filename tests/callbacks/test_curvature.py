"""Relative flatness and input-gradient norms inside Lightning: per-layer diagnostics, attacks, labels."""

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_gensens import GeneralizationMonitor, InputGradientNorm, RelativeFlatness
from lightning_gensens.data import ArrayDataModule
from lightning_gensens.models import Classifier
from tests.callbacks.conftest import make_model, make_trainer


def test_relative_flatness_logs_every_layer_with_error_and_iterations(tmp_path, digits):
    monitor = GeneralizationMonitor(
        budget=None,
        measures=[RelativeFlatness(layers=["net.3", "net.5"], max_samples=200, per_layer=True)],
        probe_size=200,
    )
    trainer = make_trainer(tmp_path, [monitor], max_epochs=2)
    trainer.fit(make_model(digits), digits)
    logged = trainer.callback_metrics
    for split in ("train", "val"):
        for layer in ("net.3", "net.5"):
            for key in ("kappa", "lambda_max", "lambda_max_error", "trace", "trace_stderr", "lanczos_iters"):
                assert math.isfinite(float(logged[f"gensens/relative_flatness/{split}/{layer}/{key}"]))
        assert f"gensens/relative_flatness/{split}/net.1/kappa" not in logged
    assert math.isfinite(float(logged["gensens/relative_flatness/pred_test_loss"]))
    assert "not Linear/Conv layers" in RelativeFlatness(layers=["net.2"]).measure.check(make_model(digits))


def test_attack_eps_logs_predicted_and_achieved_damage(tmp_path, digits):
    measure = InputGradientNorm(attack_eps=1e-3, attack_samples=128, pgd_steps=5)
    trainer = make_trainer(
        tmp_path, [GeneralizationMonitor(budget=None, measures=[measure], probe_size=200)], max_epochs=1
    )
    trainer.fit(make_model(digits), digits)
    logged = trainer.callback_metrics
    for norm in ("linf", "l2"):
        predicted = float(logged[f"gensens/input_gradient_norm/attack_{norm}/predicted"])
        fgsm = float(logged[f"gensens/input_gradient_norm/attack_{norm}/fgsm"])
        pgd = float(logged[f"gensens/input_gradient_norm/attack_{norm}/pgd"])
        assert predicted > 0 and fgsm > 0 and pgd > 0
        assert fgsm == pytest.approx(predicted, rel=0.05)  # first order at small ε (Lemma 2)
    assert "gensens/input_gradient_norm_q2/pred_test_loss" in logged


class _ValWithoutLabels(ArrayDataModule):
    def val_dataloader(self):
        return DataLoader(TensorDataset(self.val_set.tensors[0]), batch_size=128)


class _NoLabelStep(Classifier):
    def validation_step(self, batch, batch_idx):
        self(batch[0])


@pytest.mark.parametrize("measure", ["input_gradient_norm", "relative_flatness"])
def test_label_needing_measures_refuse_unlabeled_batches(tmp_path, digits, measure):
    strict = GeneralizationMonitor(budget=None, measures=[measure], probe_size=100, strict=True)
    with pytest.raises(ValueError, match="needs labels"):
        make_trainer(tmp_path, [strict], max_epochs=1).fit(
            _NoLabelStep(make_model(digits).net), _ValWithoutLabels("digits")
        )
    # left on during a real run, the measure is switched off with one warning and training goes on
    monitor = GeneralizationMonitor(budget=None, measures=[measure], probe_size=100)
    trainer = make_trainer(tmp_path / "lenient", [monitor], max_epochs=2)
    with pytest.warns(UserWarning, match=f"skipping {measure}: it needs labels"):
        trainer.fit(_NoLabelStep(make_model(digits).net), _ValWithoutLabels("digits"))
    assert trainer.current_epoch == 2 and monitor.active_measures == []
    # with an unlabeled pool it runs on the validation data, and does not predict for the pool (labels needed)
    pool = DataLoader(TensorDataset(torch.zeros(8, 64)), batch_size=4)
    unlabeled = GeneralizationMonitor(budget=None, measures=[measure, "jacobian_norm"], probe_size=100, unlabeled=pool)
    trainer = make_trainer(tmp_path / "unlabeled", [unlabeled], max_epochs=1)
    trainer.fit(make_model(digits), digits)
    logged = trainer.callback_metrics
    assert (
        f"gensens/{measure}/pred_test_loss" in logged
        and "gensens/pool/unlabeled/jacobian_norm/pred_test_loss" in logged
    )
    assert not any(k.startswith(f"gensens/pool/unlabeled/{measure}") for k in logged)


def test_the_monitors_loss_reaches_the_label_needing_measures(tmp_path, digits):
    def smoothed(logits, y):
        return torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.2)

    monitor = GeneralizationMonitor(budget=None, measures=["input_gradient_norm"], probe_size=100, loss_fn=smoothed)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=1)
    model = make_model(digits)
    trainer.fit(model, digits)
    x, y = digits.val_set.tensors
    model.eval()
    from lightning_gensens.functional import input_gradient_norm

    expected = input_gradient_norm(model, x, y, q=1, loss_fn=smoothed).mean()
    assert float(trainer.callback_metrics["gensens/input_gradient_norm/val"]) == pytest.approx(
        float(expected), rel=1e-4
    )
    with torch.no_grad():
        actual = float(smoothed(model(x), y))
    assert float(trainer.callback_metrics["gensens/test_loss"]) == pytest.approx(actual, rel=1e-5)
