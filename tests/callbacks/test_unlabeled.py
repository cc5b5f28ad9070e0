"""Label-free prediction: the measures that need no labels predict the test loss from unlabeled batches."""

import math

import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_gensens import GeneralizationMonitor
from lightning_gensens.data import ArrayDataModule
from lightning_gensens.measures import MEASURES, Estimate, Measure, Requirement
from lightning_gensens.models import Classifier
from tests.callbacks.conftest import make_model, make_trainer


class NoValLabels(Classifier):
    def validation_step(self, batch, batch_idx):
        self(batch[0])


class Unlabeled(ArrayDataModule):
    """Validation batches carry no labels; the unlabeled pool comes from the datamodule hook."""

    def val_dataloader(self):
        return DataLoader(TensorDataset(self.val_set.tensors[0]), batch_size=128)

    def unlabeled_dataloader(self):
        return DataLoader(TensorDataset(self.val_set.tensors[0][:200]), batch_size=64)


class NeedsLabels(Measure):
    name = "needs_labels"
    requires = Requirement.LABELS

    def make_metric(self, net, settings):
        from torchmetrics import MeanMetric

        return MeanMetric()

    def update(self, metric, record, net):
        metric.update(record.y.float())

    def estimate(self, computed, reference):
        return {"needs_labels": Estimate(reference.loss)}


def test_label_free_measures_predict_and_label_needing_ones_are_skipped(tmp_path, digits, caplog):
    label_free = [
        name for name, cls in MEASURES.items() if not cls.requires & Requirement.LABELS and not cls.pools_only
    ]
    monitor = GeneralizationMonitor(budget=None, probe_size=200)
    monitor.measures.append(NeedsLabels())  # a label-needing measure among the defaults
    trainer = make_trainer(tmp_path, [monitor], max_epochs=2)
    trainer.fit(NoValLabels(make_model(digits).net), Unlabeled("digits"))
    logged = trainer.callback_metrics
    assert "needs_labels" not in {m.name for m in monitor.active_measures}
    assert not any(k.startswith("gensens/needs_labels") for k in logged)
    assert "gensens/test_loss" not in logged and "gensens/train_loss" in logged
    predictions = {k for k in logged if k.endswith("/pred_test_loss")}
    estimator = {"optimal_transport": "transport_loss", "temperature_scaling": "doc_ts"}  # estimators' own names
    for name in (n for n in label_free if n != "aline"):  # aline: error only, from the third run on
        assert any(k.startswith(f"gensens/{estimator.get(name, name)}") for k in predictions), name
    assert all(math.isfinite(float(v)) for v in logged.values())


def test_unlabeled_loader_argument_keeps_the_actual_test_loss(tmp_path, digits):
    unlabeled = DataLoader(TensorDataset(digits.val_set.tensors[0][:100]), batch_size=50)
    monitor = GeneralizationMonitor(budget=None, measures=["output_sensitivity"], probe_size=200, unlabeled=unlabeled)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=1)
    model = make_model(digits)
    trainer.fit(model, digits)
    logged = trainer.callback_metrics
    assert "gensens/test_loss" in logged and "gensens/output_sensitivity/mae" in logged
    assert float(logged["gensens/output_sensitivity/val"]) > 0
    assert torch.isfinite(logged["gensens/output_sensitivity_label_free/pred_test_loss"])
