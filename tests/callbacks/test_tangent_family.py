"""The tangent-sensitivity family inside Lightning: ReLU-only refusals, soft regions, Hutchinson on CNNs."""

import math

import lightning as L
import pytest
from torch import nn

from lightning_gensens import (
    ActiveNodeBound,
    GeneralizationMonitor,
    RegionSensitivity,
    TangentSensitivity,
)
from lightning_gensens.data import ArrayDataModule
from lightning_gensens.models import Classifier, small_cnn
from tests.callbacks.conftest import make_model, make_trainer


def _gelu_model(digits) -> Classifier:
    L.seed_everything(0, verbose=False)
    return Classifier(nn.Sequential(nn.Linear(digits.num_features, 32), nn.GELU(), nn.Linear(32, 10)))


@pytest.mark.parametrize("measure", [ActiveNodeBound, RegionSensitivity, TangentSensitivity])
def test_relu_only_measures_refuse_a_gelu_network_naming_the_module(tmp_path, digits, measure):
    trainer = make_trainer(tmp_path, [GeneralizationMonitor(budget=None, measures=[measure()])], max_epochs=1)
    with pytest.raises(ValueError, match="GELU|net.1"):
        trainer.fit(_gelu_model(digits), digits)


def test_default_monitor_skips_them_on_a_gelu_network(tmp_path, digits):
    monitor = GeneralizationMonitor(budget=None, probe_size=100)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=1)
    trainer.fit(_gelu_model(digits), digits)
    names = {m.name for m in monitor.active_measures}
    assert not names & {"active_node_bound", "region_sensitivity", "tangent_sensitivity"}
    assert {"output_sensitivity", "jacobian_norm", "fisher_rao_norm"} <= names


def test_soft_regions_and_pattern_counts(tmp_path, digits):
    monitor = GeneralizationMonitor(
        budget=None, measures=[RegionSensitivity(mode="soft"), "active_node_bound"], probe_size=300
    )
    trainer = make_trainer(tmp_path, [monitor], max_epochs=2)
    trainer.fit(make_model(digits), digits)
    logged = trainer.callback_metrics
    assert float(logged["gensens/region_sensitivity/train_patterns"]) == 300
    assert float(logged["gensens/region_sensitivity/val_patterns"]) == len(digits.val_set)
    for key in (
        "gensens/region_sensitivity/pred_test_loss",
        "gensens/active_node_bound/pred_test_loss",
        "gensens/active_node_bound/val_mean_active",
    ):
        assert math.isfinite(float(logged[key])), key


def test_hutchinson_tangent_sensitivity_on_a_cnn(tmp_path):
    images = ArrayDataModule("digits", image=True)
    L.seed_everything(0, verbose=False)
    model = Classifier(small_cnn(1, 8, 10, width=4, batch_norm=True))
    monitor = GeneralizationMonitor(
        budget=None, measures=[TangentSensitivity(method="hutchinson"), "active_node_bound"], probe_size=64
    )
    trainer = make_trainer(tmp_path, [monitor], max_epochs=1, limit_val_batches=1)
    trainer.fit(model, images)
    logged = trainer.callback_metrics
    stderr, value = (float(logged[f"gensens/tangent_sensitivity/{k}"]) for k in ("val_stderr", "val"))
    assert 0 < stderr < value
    assert "method='hutchinson'" in TangentSensitivity().measure.check(model)


def test_auto_says_once_which_method_it_uses(tmp_path, digits, caplog):
    monitor = GeneralizationMonitor(budget=None, measures=[TangentSensitivity()], probe_size=64)
    with caplog.at_level("INFO"):
        make_trainer(tmp_path, [monitor], max_epochs=2, limit_train_batches=2).fit(make_model(digits), digits)
    assert caplog.text.count("tangent_sensitivity: method='auto' uses the exact closed form") == 1
