"""When the monitor measures: at every validation run, every n-th validation run, under ``trainer.validate()``, and
without a validation loop from unlabeled pools; and when it says it cannot."""

import logging
import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lightning_gensens import GeneralizationMonitor
from lightning_gensens.models import Classifier
from tests.callbacks.conftest import make_model, make_trainer


def _measured_epochs(monitor):
    return [int(row["epoch"]) for row in monitor.history]


def test_every_validation_run_of_an_epoch_measures(tmp_path, digits):
    monitor = GeneralizationMonitor(budget=None, measures=["linf_norm"], probe_size=64)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=3, val_check_interval=0.5)
    trainer.fit(make_model(digits), digits)
    assert _measured_epochs(monitor) == [0, 0, 1, 1, 2, 2]
    assert monitor.mae_table[0]["epochs"] == 5  # the time-ratio estimators compare consecutive runs


def test_every_n_epochs_counts_validation_runs(tmp_path, digits):
    monitor = GeneralizationMonitor(budget=None, measures=["linf_norm"], probe_size=64, every_n_epochs=2)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=8, check_val_every_n_epoch=2)
    trainer.fit(make_model(digits), digits)
    assert _measured_epochs(monitor) == [3, 7]  # validation runs at epochs 1, 3, 5, 7; every second one measured


def test_a_time_ratio_estimator_that_can_never_log_is_announced(tmp_path, digits):
    monitor = GeneralizationMonitor(budget=None, measures=["linf_norm"], probe_size=64, every_n_epochs=2)
    with pytest.warns(UserWarning, match="fewer than two times"):
        make_trainer(tmp_path, [monitor], max_epochs=3).fit(make_model(digits), digits)


def test_trainer_validate_measures_a_trained_model(tmp_path, digits):
    model = make_model(digits)
    monitor = GeneralizationMonitor(budget=None, measures=["output_sensitivity", "fisher_rao_norm"], probe_size=64)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=1)
    (results,) = trainer.validate(model, digits)
    assert math.isfinite(results["gensens/output_sensitivity/pred_test_loss"])
    assert math.isfinite(results["gensens/test_loss"])


def test_trainer_validate_after_a_fit_on_loaders_reuses_the_fits_probe(tmp_path, digits):
    monitor, model = GeneralizationMonitor(), make_model(digits)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=2)
    trainer.fit(model, digits.train_dataloader(), digits.val_dataloader())
    (results,) = trainer.validate(model, digits.val_dataloader())
    assert math.isfinite(results["gensens/train_loss"])
    assert math.isfinite(results["gensens/trivial/pred_test_loss"])


def test_trainer_validate_without_training_data_measures_without_a_probe(tmp_path, digits, caplog):
    monitor, model = GeneralizationMonitor(), make_model(digits)
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        (results,) = make_trainer(tmp_path, [monitor]).validate(model, digits.val_dataloader())
    said = [r.getMessage() for r in caplog.records if "no training data to draw the probe" in r.getMessage()]
    assert len(said) == 1
    assert math.isfinite(results["gensens/test_loss"]) and "gensens/train_loss" not in results
    assert math.isfinite(results["gensens/linf_norm/val"])  # a weight-only measure needs no probe


class _NoValidation(Classifier):
    validation_step = None  # type: ignore[assignment]


def test_without_a_validation_loop_the_pools_are_measured_and_early_stopping_can_use_them(tmp_path, digits):
    pool = DataLoader(TensorDataset(digits.val_set.tensors[0]), batch_size=128)
    monitor = GeneralizationMonitor(
        budget=None, measures=["output_sensitivity", "average_confidence"], probe_size=128, unlabeled=pool
    )
    stop = EarlyStopping("gensens/pool/unlabeled/average_confidence/pred_test_loss", patience=100)
    trainer = make_trainer(tmp_path, [monitor, stop], max_epochs=3, limit_val_batches=0)
    model = make_model(digits)
    trainer.fit(model, digits.train_dataloader())
    logged = trainer.callback_metrics
    assert _measured_epochs(monitor) == [0, 1, 2]
    for key in (
        "gensens/pool/unlabeled/output_sensitivity/pred_test_loss",
        "gensens/pool/unlabeled/average_confidence/pred_test_error",
        "gensens/train_loss",
    ):
        assert math.isfinite(float(logged[key])), key
    assert stop.best_score is not None and math.isfinite(float(stop.best_score))


def test_nothing_to_measure_is_said_at_fit_start(tmp_path, digits):
    monitor = GeneralizationMonitor(budget=None, measures=["linf_norm"], probe_size=64)
    with pytest.warns(UserWarning, match="will measure nothing: .*limit_val_batches=0"):
        make_trainer(tmp_path, [monitor], max_epochs=1, limit_val_batches=0).fit(make_model(digits), digits)
    assert monitor.history == []


def test_pools_predict_with_validation_as_reference_and_never_see_their_labels(tmp_path, digits):
    x, y = digits.val_set.tensors
    seen_labels = []

    from lightning_gensens.measures import Estimate, Measure

    class Spy(Measure):
        """Records the labels every update receives."""

        name = "spy"

        def make_metric(self, net, settings):
            from torchmetrics import SumMetric

            return SumMetric()

        def update(self, metric, record, net):
            seen_labels.append(record.y)
            metric.update(record.logits.shape[0])

        def estimate(self, computed, reference):
            return {self.name: Estimate(reference.loss * computed["val"] / computed["train"])}

    noisy = TensorDataset(x + 0.5 * torch.randn_like(x), y)  # labels held back: for scoring only
    pools = {"noisy": DataLoader(noisy, batch_size=100), "clean": DataLoader(TensorDataset(x[:50]), batch_size=50)}
    monitor = GeneralizationMonitor(
        budget=None,
        measures=[Spy(), "trivial", "atc", "input_gradient_norm"],
        probe_size=128,
        unlabeled=pools,
        strict=True,
    )
    trainer = make_trainer(tmp_path, [monitor], max_epochs=2)
    trainer.fit(make_model(digits), digits)
    logged = trainer.callback_metrics
    pool_updates = [labels for labels in seen_labels if labels is None]
    assert len(pool_updates) == 2 * (len(noisy) // 100 + (len(noisy) % 100 > 0) + 1)  # pools: never labels
    assert math.isclose(float(logged["gensens/pool/noisy/trivial/pred_test_loss"]), float(logged["gensens/test_loss"]))
    assert math.isfinite(float(logged["gensens/pool/noisy/test_loss"]))  # the held-back labels score the pool
    assert "gensens/pool/clean/test_loss" not in logged and "gensens/pool/clean/atc/pred_test_error" in logged
    assert not any(k.startswith("gensens/pool/noisy/input_gradient_norm") for k in logged)  # needs labels
    rows = {r["estimator"]: r for r in monitor.mae_table}
    assert rows["pool/noisy/trivial"]["skill_loss"] == 0.0 and rows["pool/noisy/spy"]["epochs"] == 2


def test_a_pool_with_another_feature_shape_is_an_error_naming_it(tmp_path, digits):
    pools = {"wrong": DataLoader(TensorDataset(torch.zeros(10, 32)), batch_size=5)}
    monitor = GeneralizationMonitor(budget=None, measures=["output_sensitivity"], probe_size=64, unlabeled=pools)
    with pytest.raises(ValueError, match="pool/wrong"):
        make_trainer(tmp_path, [monitor], max_epochs=1).fit(make_model(digits), digits)


class _TwoLoaders(Classifier):
    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        self.log("val/loss", torch.nn.functional.cross_entropy(self(x), y))


@pytest.mark.parametrize("dataloader_idx", [0, 1])
def test_of_several_validation_loaders_the_chosen_one_is_measured_and_named(tmp_path, digits, caplog, dataloader_idx):
    x, y = digits.val_set.tensors
    halves = [DataLoader(TensorDataset(x[:200], y[:200]), batch_size=64), DataLoader(TensorDataset(x[200:], y[200:]))]
    monitor = GeneralizationMonitor(dataloader_idx=dataloader_idx)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=3)
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        trainer.fit(_TwoLoaders(make_model(digits).net), digits.train_dataloader(), halves)
    said = [r.getMessage() for r in caplog.records if "validation loaders" in r.getMessage()]
    assert said == [
        f"GeneralizationMonitor: of the 2 validation loaders, loader {dataloader_idx} is measured "
        "(`dataloader_idx=` chooses another)."
    ]
    measured = monitor.history[-1]["gensens/trivial/val"]  # trivial's value on a split: its samples
    assert measured == (200 if dataloader_idx == 0 else len(x) - 200)


def test_a_validation_loader_index_out_of_range_is_refused(tmp_path, digits):
    with pytest.raises(ValueError, match="dataloader_idx=1, but there are 1 validation loaders"):
        make_trainer(tmp_path, [GeneralizationMonitor(dataloader_idx=1)], max_epochs=1).fit(make_model(digits), digits)


RIDER_KEYS = [
    *(
        f"gensens/{name}/pred_test_loss"
        for name in ("trivial", "average_confidence", "difference_of_confidences", "atc")
    ),
    "gensens/pool/unlabeled/pred_test_error",
    "gensens/pool/unlabeled/pred_test_loss",
]
"""Keys of the riders, which the default monitor logs at every validation run."""


class _Fresh(L.Callback):
    """After each validation run, which of our keys ``trainer.callback_metrics`` holds and whether the monitor
    measured at this run (its history grew, by a row of this epoch)."""

    def __init__(self, monitor):
        self.monitor, self.runs, self._rows = monitor, [], 0

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        ours = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("gensens/")}
        row = self.monitor.history[-1] if self.monitor.history else {}
        current = row.get("epoch") == trainer.current_epoch and len(self.monitor.history) == self._rows + 1
        self._rows = len(self.monitor.history)
        self.runs.append((current, ours, row))


def _pool(digits):
    return DataLoader(TensorDataset(digits.val_set.tensors[0][::2]), batch_size=128)


def test_early_stopping_and_checkpoints_on_the_riders_keys_work_from_the_first_run(tmp_path, digits):
    monitor = GeneralizationMonitor(unlabeled=_pool(digits))
    stop = EarlyStopping(monitor="gensens/trivial/pred_test_loss", strict=True, patience=3)
    checkpoints = [ModelCheckpoint(tmp_path / str(i), monitor=key) for i, key in enumerate(RIDER_KEYS)]
    fresh = _Fresh(monitor)
    trainer = make_trainer(tmp_path, [monitor, stop, *checkpoints, fresh], max_epochs=8)
    trainer.fit(make_model(digits), digits)
    assert len(fresh.runs) == trainer.current_epoch
    for current, ours, _ in fresh.runs:  # every value compared was measured at that run
        assert current and set(RIDER_KEYS) <= set(ours)
    assert math.isfinite(float(stop.best_score))
    for checkpoint in checkpoints:
        assert checkpoint.best_model_score is not None and math.isfinite(float(checkpoint.best_model_score))


def test_every_value_under_our_prefix_in_callback_metrics_was_computed_at_the_current_run(tmp_path, digits):
    monitor = GeneralizationMonitor(unlabeled=_pool(digits))
    fresh = _Fresh(monitor)
    make_trainer(tmp_path, [monitor, fresh], max_epochs=6).fit(make_model(digits), digits)
    assert len(fresh.runs) == 6 and fresh.runs[-1][0]  # the last run measures
    for current, ours, row in fresh.runs:  # a run the budget skipped (riders over it) leaves none of our keys
        assert ours == ({k: v for k, v in row.items() if k != "epoch"} if current else {})


def test_a_validation_run_that_measures_nothing_leaves_none_of_our_keys(tmp_path, digits):
    monitor = GeneralizationMonitor(every_n_epochs=2)
    fresh = _Fresh(monitor)
    make_trainer(tmp_path, [monitor, fresh], max_epochs=4).fit(make_model(digits), digits)
    assert [bool(ours) for _, ours, _ in fresh.runs] == [False, True, False, True]
