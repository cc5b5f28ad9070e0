"""Unlabeled pools in a fit: the recommended keys, numbers that cannot be wrong in kind, resume."""

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_gensens import GeneralizationMonitor
from lightning_gensens.measures import ShiftTest
from tests.callbacks.conftest import make_model, make_trainer
from tests.measures.test_optimal_transport import ESTIMATORS


def _pools(digits):
    x, y = digits.val_set.tensors
    g = torch.Generator().manual_seed(0)
    return {
        "noisy": DataLoader(TensorDataset(x + 2.0 * torch.randn(x.shape, generator=g), y), batch_size=128),
        "few": DataLoader(TensorDataset(x[y < 3], y[y < 3]), batch_size=128),  # label shift
    }


def _monitor(digits, measures, probe_size=128, **kwargs):
    """An unbudgeted monitor of ``measures`` with the two pools."""
    return GeneralizationMonitor(
        budget=None, measures=measures, probe_size=probe_size, unlabeled=_pools(digits), **kwargs
    )


def test_a_fit_logs_the_recommended_keys_and_numbers_in_range(tmp_path, digits, caplog):
    measures = ["trivial", "difference_of_confidences", "atc", "temperature_scaling", "optimal_transport", "shift_test"]
    monitor = _monitor(digits, measures, probe_size=256)
    with caplog.at_level("INFO"):
        make_trainer(tmp_path, [monitor], max_epochs=2).fit(make_model(digits), digits)
    expected = (
        "each pool's gensens/pool/<name>/pred_test_error is shift_gated's prediction and pred_test_loss shift_gated's"
    )
    assert expected in caplog.text
    last = monitor.history[-1]
    for pool in ("noisy", "few"):
        p = f"gensens/pool/{pool}"
        assert last[f"{p}/pred_test_error"] == last[f"{p}/shift_gated/pred_test_error"]
        assert last[f"{p}/pred_test_loss"] == last[f"{p}/shift_gated/pred_test_loss"]
        assert f"{p}/doc_ts/pred_test_error" in last
        assert last[f"{p}/shift_test/shift"] in (0.0, 1.0, 2.0)  # which shift the pool shows, and the tests' p-values
        assert all(0 < last[f"{p}/shift_test/{v}"] <= 1 for v in ("p_shift", "p_classes", "p_twin"))
        assert {f"{p}/{e}/pred_test_{'error' if e.startswith('cot') else 'loss'}" for e in ESTIMATORS} <= set(last)
    for row in monitor.history:
        for key, value in row.items():
            if key.endswith("pred_test_error"):
                assert 0.0 <= value <= 1.0, key
            if key.endswith("pred_test_loss"):
                assert value >= 0.0, key
    top = ("gensens/shift_gated/", "gensens/shift_test/shift", "gensens/shift_test/p_")  # pools only: no val pair
    assert not any(key.startswith(top) for row in monitor.history for key in row)
    shift_test = next(m for m in monitor.active_measures if m.name == "shift_test")
    assert shift_test._distances is not None  # the output layer's inputs reached the nearest-neighbour distance
    assert len(shift_test._distances[1]) == len(digits.val_set)  # of every validation sample, to the probe's
    rows = {r["estimator"]: r for r in monitor.mae_table}
    assert rows["pool/noisy/cot"]["epochs"] == 2 and math.isnan(rows["pool/noisy/cot"]["mae_test_loss"])


def test_against_the_training_probe_the_recommended_keys_are_the_plain_difference_of_confidences(
    tmp_path, digits, caplog
):
    """Without a validation loop the pools are measured against the probe, on which a fitted temperature is too low:
    their recommended keys carry DoC's predictions there, doc_ts's keys are logged beside them."""
    monitor = _monitor(digits, ["trivial", "difference_of_confidences", "temperature_scaling"], probe_size=256)
    with caplog.at_level("INFO"):
        trainer = make_trainer(tmp_path, [monitor], max_epochs=2, limit_val_batches=0)
        trainer.fit(make_model(digits), digits.train_dataloader())
    assert "against the training probe (no labelled validation run) difference_of_confidences's and" in caplog.text
    assert len(monitor.history) == 2
    for row in monitor.history:
        for pool in ("noisy", "few"):
            p = f"gensens/pool/{pool}"
            for kind in ("error", "loss"):
                assert row[f"{p}/pred_test_{kind}"] == row[f"{p}/difference_of_confidences/pred_test_{kind}"]
                assert math.isfinite(row[f"{p}/doc_ts/pred_test_{kind}"])


def test_an_explicit_recommendation_holds_against_either_reference(tmp_path, digits):
    monitor = _monitor(digits, ["trivial", "temperature_scaling"], recommend={"error": "doc_ts"})
    trainer = make_trainer(tmp_path, [monitor], max_epochs=1, limit_val_batches=0)
    with pytest.warns(UserWarning, match="recommended loss estimator 'difference_of_confidences' never predicted"):
        trainer.fit(make_model(digits), digits.train_dataloader())
    last = monitor.history[-1]
    assert last["gensens/pool/noisy/pred_test_error"] == last["gensens/pool/noisy/doc_ts/pred_test_error"]
    assert "gensens/pool/noisy/pred_test_loss" not in last


def test_recommend_overrides_and_is_validated(tmp_path, digits):
    monitor = _monitor(digits, ["trivial", "optimal_transport"], recommend={"error": "cott", "loss": "trivial"})
    make_trainer(tmp_path, [monitor], max_epochs=1).fit(make_model(digits), digits)
    last = monitor.history[-1]
    assert last["gensens/pool/noisy/pred_test_error"] == last["gensens/pool/noisy/cott/pred_test_error"]
    assert last["gensens/pool/noisy/pred_test_loss"] == last["gensens/pool/noisy/trivial/pred_test_loss"]
    with pytest.raises(ValueError, match="recommend takes the keys"):
        GeneralizationMonitor(recommend={"accuracy": "cot"})
    with pytest.raises(ValueError, match="estimator's name"):
        GeneralizationMonitor(recommend={"error": ""})


def test_a_recommended_estimator_that_never_predicts_is_named_once(tmp_path, digits):
    monitor = _monitor(digits, ["trivial"])
    with pytest.warns(UserWarning, match="recommended error estimator 'shift_gated' never predicted") as record:
        make_trainer(tmp_path, [monitor], max_epochs=2).fit(make_model(digits), digits)
    assert sum("recommended error" in str(w.message) for w in record) == 1
    assert not any(k.endswith("pool/noisy/pred_test_error") for k in monitor.history[-1])


def test_resume_continues_the_pool_scores(tmp_path, digits):
    def monitor():
        return GeneralizationMonitor(
            budget=None,
            measures=["trivial", "difference_of_confidences", "optimal_transport"],
            probe_size=128,
            unlabeled=_pools(digits),
        )

    trainer = make_trainer(tmp_path, [monitor()], max_epochs=2)
    trainer.fit(make_model(digits), digits)
    resumed = monitor()
    make_trainer(tmp_path / "resumed", [resumed], max_epochs=3).fit(
        make_model(digits), digits, ckpt_path=trainer.checkpoint_callback.best_model_path
    )
    rows = {r["estimator"]: r["epochs"] for r in resumed.mae_table}
    assert rows["pool/noisy/cot"] == rows["pool/few/transport_loss"] == 3


def test_a_pools_only_measure_is_left_out_without_pools_and_refused_when_asked_for(tmp_path, digits):
    monitor = GeneralizationMonitor(measures=None, probe_size=128)
    make_trainer(tmp_path, [monitor], max_epochs=1).fit(make_model(digits), digits)
    assert "shift_test" in [m.name for m in monitor.measures]
    assert "shift_test" not in [m.name for m in monitor.active_measures]
    asked = GeneralizationMonitor(measures=["trivial", "shift_test"])
    with pytest.raises(ValueError, match="shift_test measures pools only"):
        make_trainer(tmp_path / "asked", [asked], max_epochs=1).fit(make_model(digits), digits)


def test_logit_sample_measures_read_a_shift_test_sample_of_the_same_size(tmp_path, digits):
    shift = ShiftTest(max_samples=4096)  # the others' sample size: they read its samples, it reads none of theirs
    monitor = _monitor(digits, ["trivial", "temperature_scaling", "optimal_transport", shift])
    make_trainer(tmp_path, [monitor], max_epochs=2).fit(make_model(digits), digits)
    last = monitor.history[-1]
    for estimator in ("shift_gated", "doc_ts", "cot"):
        assert 0 <= last[f"gensens/pool/noisy/{estimator}/pred_test_error"] <= 1, estimator
    assert {m.name for m in monitor.active_measures} >= {"shift_test", "temperature_scaling", "optimal_transport"}
