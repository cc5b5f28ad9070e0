"""Bad input gets a clear error or a documented skip: a model without Linear/Conv layers, NaN/Inf weights, a batch
layout the default ``batch_to_xy`` cannot read, a validation step that never calls the model."""

import pytest
import torch
from torch import nn

from lightning_gensens import GeneralizationMonitor
from lightning_gensens.data import ArrayDataModule
from lightning_gensens.models import Classifier
from tests.callbacks.conftest import make_model, make_trainer


def test_model_without_linear_or_conv_layers(tmp_path, digits):
    class NoWeights(Classifier):
        def __init__(self):
            super().__init__(nn.Sequential(nn.Flatten()))
            self.scale = nn.Parameter(torch.ones(()))

        def forward(self, x):
            return x[:, :10] * self.scale

    trainer = make_trainer(tmp_path, [GeneralizationMonitor(budget=None)], max_epochs=1)
    with pytest.raises(ValueError, match="no nn.Linear or nn.Conv"):
        trainer.fit(NoWeights(), digits)


@pytest.mark.parametrize("bad", [float("nan"), -float("inf")])
def test_nan_weights_are_reported_not_measured(tmp_path, digits, bad):
    class Diverging(Classifier):
        def on_validation_epoch_start(self):
            with torch.no_grad():
                self.net[1].weight[0, 0] = bad

    model = Diverging(make_model(digits).net)
    trainer = make_trainer(tmp_path, [GeneralizationMonitor(budget=None, probe_size=50)], max_epochs=1)
    with pytest.warns(UserWarning, match="NaN/Inf weights"):
        trainer.fit(model, digits)
    assert not any(k.startswith("gensens/") for k in trainer.callback_metrics)


def test_unreadable_batch_layout(tmp_path, digits):
    class Wrapped(Classifier):
        def validation_step(self, batch, batch_idx):
            self(batch.pair[0])

    class Batch:
        def __init__(self, pair):
            self.pair = pair

    class Odd(ArrayDataModule):
        def val_dataloader(self):
            return torch.utils.data.DataLoader(
                self.val_set, batch_size=128, collate_fn=lambda items: Batch(torch.utils.data.default_collate(items))
            )

    trainer = make_trainer(tmp_path, [GeneralizationMonitor(budget=None, measures=["linf_norm"])], max_epochs=1)
    with pytest.raises(TypeError, match="batch_to_xy"):
        trainer.fit(Wrapped(make_model(digits).net), Odd("digits"))
    monitor = GeneralizationMonitor(
        budget=None, measures=["linf_norm"], batch_to_xy=lambda b: tuple(b.pair) if isinstance(b, Batch) else tuple(b)
    )
    trainer = make_trainer(tmp_path / "ok", [monitor], max_epochs=1)
    trainer.fit(Wrapped(make_model(digits).net), Odd("digits"))
    assert "gensens/test_loss" in trainer.callback_metrics


def test_validation_step_that_never_calls_the_model(tmp_path, digits):
    class Indirect(Classifier):
        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val/loss", nn.functional.cross_entropy(self.net(x), y))

    trainer = make_trainer(tmp_path, [GeneralizationMonitor(budget=None, measures=["linf_norm"])], max_epochs=1)
    with pytest.raises(RuntimeError, match="module="):
        trainer.fit(Indirect(make_model(digits).net), digits)
    trainer = make_trainer(
        tmp_path / "ok", [GeneralizationMonitor(budget=None, measures=["linf_norm"], module="net")], max_epochs=1
    )
    trainer.fit(Indirect(make_model(digits).net), digits)
    assert "gensens/linf_norm/val" in trainer.callback_metrics
