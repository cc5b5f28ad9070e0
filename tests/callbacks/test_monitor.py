import csv
import math

import lightning as L
import pytest
import torch
from torch import Tensor, nn

from lightning_gensens import GeneralizationMonitor, OutputSensitivity
from lightning_gensens.data import ArrayDataModule
from lightning_gensens.measures import MEASURES, Estimate, JacobianNorm, Measure
from lightning_gensens.models import Classifier, small_cnn
from tests.callbacks.conftest import make_model, make_trainer

SPLITS = ("train", "val")
DECLARED: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    # measure: (its values under gensens/<measure>/, its estimators of the test loss, of the test error)
    "trivial": (SPLITS, ("trivial",), ("trivial",)),
    "average_confidence": (
        (*SPLITS, "train_entropy", "val_entropy"),
        ("average_confidence",),
        ("average_confidence",),
    ),
    "difference_of_confidences": (
        (*SPLITS, "train_entropy", "val_entropy"),
        ("difference_of_confidences",),
        ("difference_of_confidences",),
    ),
    "atc": (SPLITS, ("atc",), ("atc",)),
    "temperature_scaling": (("temperature",), ("doc_ts",), ("doc_ts",)),
    "optimal_transport": (
        ("temperature",),
        ("transport_loss", "transport_loss_ratio_em"),
        ("cot", "cot_em", "cott"),
    ),
    "aline": ((), (), ("aline",)),  # from the third run on
    "linf_norm": ((*SPLITS, "log_prod"), ("linf_norm", "linf_lognorm"), ("linf_norm", "linf_lognorm")),
    "active_node_bound": (
        (*SPLITS, "train_mean_active", "val_mean_active"),
        ("active_node_bound",),
        ("active_node_bound",),
    ),
    "tangent_sensitivity": (SPLITS, ("tangent_sensitivity",), ("tangent_sensitivity",)),
    "region_sensitivity": (
        (*SPLITS, "train_patterns", "val_patterns"),
        ("region_sensitivity",),
        ("region_sensitivity",),
    ),
    "output_sensitivity": (
        SPLITS,
        ("output_sensitivity", "output_sensitivity_label_free"),
        ("output_sensitivity",),
    ),
    "relative_flatness": (
        (*SPLITS, "train_kappa_max", "val_kappa_max"),
        ("relative_flatness",),
        ("relative_flatness",),
    ),
    "input_gradient_norm": (
        (*SPLITS, "train_q2", "val_q2"),
        ("input_gradient_norm", "input_gradient_norm_q2"),
        ("input_gradient_norm", "input_gradient_norm_q2"),
    ),
    "jacobian_norm": (SPLITS, ("jacobian_norm",), ("jacobian_norm",)),
    "fisher_rao_norm": (SPLITS, ("fisher_rao_norm",), ("fisher_rao_norm",)),
    "spectral_norm": (SPLITS, ("spectral_norm",), ("spectral_norm",)),
    "perturbation_disagreement": ((), ("perturbation_disagreement",), ("perturbation_disagreement",)),
}
"""What each built-in measure logs on a labelled classifier, written out here rather than read from the monitor."""
SHARED = ("train_loss", "test_loss", "train_error", "test_error", "overhead")


def _expected_keys(monitor: GeneralizationMonitor) -> set[str]:
    """Every key the monitor's configuration (its measures, not the ones still running) logs at the end of a fit
    of three or more measured runs of a labelled classifier."""
    names = [m.name for m in monitor.measures if not m.pools_only]  # left out of a fit without pools
    assert set(names) <= set(DECLARED), f"declare what {sorted(set(names) - set(DECLARED))} log in DECLARED"
    keys = {f"gensens/{key}" for key in SHARED}
    for name in names:
        values, loss, error = DECLARED[name]
        keys |= {f"gensens/{name}/{value}" for value in (*values, "seconds")}
        keys |= {f"gensens/{e}/{key}" for e in loss for key in ("pred_test_loss", "mae")}
        keys |= {f"gensens/{e}/pred_test_error" for e in error}
    return keys


def _estimators(monitor: GeneralizationMonitor) -> set[str]:
    measures = [m for m in monitor.measures if not m.pools_only]
    return {e for m in measures for e in (*DECLARED[m.name][1], *DECLARED[m.name][2])}


def _logged(tmp_path) -> list[dict[str, str]]:
    (path,) = tmp_path.glob("lightning_logs/version_*/metrics.csv")
    with open(path) as f:
        return list(csv.DictReader(f))


def test_fit_logs_every_key_with_finite_values_and_the_mae_table(tmp_path, digits):
    monitor = GeneralizationMonitor(budget=None, probe_size=300)
    assert [m.name for m in monitor.measures] == list(MEASURES)  # the default: every registered measure
    trainer = make_trainer(tmp_path, [monitor], max_epochs=3)
    trainer.fit(make_model(digits), digits)
    metrics = trainer.callback_metrics
    expected = _expected_keys(monitor)  # a measure switched off by an error leaves its keys missing
    assert not expected - set(metrics), sorted(expected - set(metrics))
    for key in expected:
        assert math.isfinite(float(metrics[key])), key
    assert {row["estimator"] for row in monitor.mae_table} == _estimators(monitor)
    rows = _logged(tmp_path)
    assert sum(1 for r in rows if r.get("gensens/test_loss")) == 3  # one point per validation epoch
    assert sum(1 for r in rows if r.get("gensens/linf_norm/pred_test_loss")) == 2  # none at the first epoch
    table = {r["estimator"]: r for r in monitor.mae_table}
    assert table["linf_norm"]["epochs"] == 2 and table["output_sensitivity"]["epochs"] == 3
    (csv_path,) = tmp_path.glob("lightning_logs/version_*/gensens_mae.csv")
    assert "output_sensitivity_label_free" in csv_path.read_text()
    for est in ("output_sensitivity", "trivial", "linf_lognorm"):  # the MAE recomputed from the logged curves
        pairs = [
            (float(r[f"gensens/{est}/pred_test_loss"]), float(r["gensens/test_loss"]))
            for r in rows
            if r.get(f"gensens/{est}/pred_test_loss")
        ]
        expected = sum(abs(p - a) for p, a in pairs) / len(pairs)
        assert math.isclose(table[est]["mae_test_loss"], expected, rel_tol=1e-6), est


def test_a_measure_switched_off_by_an_error_leaves_expected_keys_missing(tmp_path, digits):
    """The key check above fails when a measure raises: its keys come from the configuration."""

    class Failing(JacobianNorm):
        def update(self, metric, record, net):
            raise RuntimeError("boom")

    monitor = GeneralizationMonitor(budget=None, measures=[Failing(), "trivial"], probe_size=50)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=1, limit_train_batches=2)
    with pytest.warns(UserWarning, match="jacobian_norm raised RuntimeError.*switched off"):
        trainer.fit(make_model(digits), digits)
    missing = _expected_keys(monitor) - set(trainer.callback_metrics)
    assert {"gensens/jacobian_norm/val", "gensens/jacobian_norm/pred_test_loss"} <= missing
    assert not {key for key in missing if "trivial" in key}
    assert [m.name for m in monitor.active_measures] == ["trivial"]  # what the old check would have expected


def test_actual_losses_match_a_direct_evaluation(tmp_path, digits):
    monitor = GeneralizationMonitor(budget=None, measures=["linf_norm"], probe_size=10_000)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=1)
    model = make_model(digits)
    trainer.fit(model, digits)
    model.eval()
    with torch.no_grad():
        for key, dataset in (("test", digits.val_set), ("train", digits.train_set)):
            x, y = dataset.tensors
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
            error = (logits.argmax(1) != y).double().mean()
            assert math.isclose(float(trainer.callback_metrics[f"gensens/{key}_loss"]), float(loss), rel_tol=1e-5)
            assert math.isclose(float(trainer.callback_metrics[f"gensens/{key}_error"]), float(error), rel_tol=1e-9)


def _final_weights(tmp_path, digits, callbacks) -> dict[str, Tensor]:
    model = make_model(digits, seed=7)
    model.net.insert(3, nn.Dropout(0.2))  # training-time randomness must not be perturbed by measuring
    trainer = make_trainer(tmp_path, callbacks, max_epochs=3)
    trainer.fit(model, digits)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_measuring_does_not_change_training(tmp_path, digits):
    plain = _final_weights(tmp_path / "plain", digits, [])
    monitor = GeneralizationMonitor(budget=None, probe_size=200)
    measured = _final_weights(tmp_path / "measured", digits, [monitor])
    assert plain.keys() == measured.keys()
    for k in plain:
        assert torch.equal(plain[k], measured[k]), k


def test_resume_continues_time_ratio_estimators(tmp_path, digits):
    monitor = GeneralizationMonitor(budget=None, measures=["linf_norm", "spectral_norm"], probe_size=200)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=2)
    trainer.fit(make_model(digits), digits)
    ckpt = trainer.checkpoint_callback.best_model_path
    assert monitor.mae_table[0]["epochs"] == 1

    resumed = GeneralizationMonitor(budget=None, measures=["linf_norm", "spectral_norm"], probe_size=200)
    trainer = make_trainer(tmp_path / "resumed", [resumed], max_epochs=4)
    trainer.fit(make_model(digits), digits, ckpt_path=ckpt)
    rows = [r for r in _logged(tmp_path / "resumed") if r.get("gensens/test_loss")]
    assert len(rows) == 2 and all(r["gensens/linf_norm/pred_test_loss"] for r in rows)  # no gap after resume
    assert {r["estimator"]: r["epochs"] for r in resumed.mae_table} == {
        "linf_norm": 3,
        "linf_lognorm": 3,
        "spectral_norm": 3,
    }  # no reset


def test_a_new_measure_plugs_in_without_touching_the_monitor(tmp_path, digits):
    class LogitNorm(Measure):
        """A toy measure: mean squared logit, with the ratio estimator."""

        name = "logit_norm"

        def make_metric(self, net, settings):
            from torchmetrics import MeanMetric

            return MeanMetric()

        def update(self, metric, record, net):
            metric.update(record.logits.square().sum(1))

        def estimate(self, computed, reference):
            ratio = computed["val"] / computed["train"]
            return {"logit_norm": Estimate(ratio * reference.loss, ratio * reference.error)}

    monitor = GeneralizationMonitor(budget=None, measures=[LogitNorm(), "output_sensitivity"], probe_size=200)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=2)
    trainer.fit(make_model(digits), digits)
    assert "logit_norm" not in MEASURES
    for key in ("gensens/logit_norm/train", "gensens/logit_norm/pred_test_loss", "gensens/logit_norm/mae"):
        assert math.isfinite(float(trainer.callback_metrics[key]))


def test_a_single_measure_callback_runs_alone(tmp_path, digits):
    trainer = make_trainer(tmp_path, [OutputSensitivity(sigma=0.05, probe_size=100, budget=None)], max_epochs=1)
    trainer.fit(make_model(digits), digits)
    assert {
        "gensens/output_sensitivity/val",
        "gensens/output_sensitivity_label_free/pred_test_loss",
        "gensens/output_sensitivity/test_loss",  # a measure callback's shared keys are namespaced by its measure
    } <= set(trainer.callback_metrics)


def test_two_instances_coexist_in_checkpoints(tmp_path, digits):
    a, b = GeneralizationMonitor(budget=None, measures=["linf_norm"], probe_size=50), OutputSensitivity(probe_size=50)
    assert a.state_key != b.state_key
    trainer = make_trainer(tmp_path, [a, b], max_epochs=1)
    trainer.fit(make_model(digits), digits)
    ckpt = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=True)
    assert {a.state_key, b.state_key} <= set(ckpt["callbacks"])


def test_measures_every_n_epochs(tmp_path, digits):
    trainer = make_trainer(
        tmp_path, [GeneralizationMonitor(budget=None, measures=["linf_norm"], every_n_epochs=2)], max_epochs=4
    )
    trainer.fit(make_model(digits), digits)
    assert sum(1 for r in _logged(tmp_path) if r.get("gensens/test_loss")) == 2


# -- bad input ---------------------------------------------------------------------------------------------------
def test_arguments_are_validated():
    with pytest.raises(ValueError, match="probe_size"):
        GeneralizationMonitor(budget=None, probe_size=0)
    with pytest.raises(ValueError, match="unknown measure"):
        GeneralizationMonitor(budget=None, measures=["nope"])
    with pytest.raises(ValueError, match="sigma"):
        OutputSensitivity(sigma=-1)


def _hooked(model: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_hooks_are_attached_only_while_measuring_and_removed_after_fit(tmp_path, digits):
    seen = {"training": [], "measuring": []}

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen["training"].append(_hooked(pl_module))

    class Hooks(Measure):
        name = "hooks"

        def make_metric(self, net, settings):
            from torchmetrics import MeanMetric

            return MeanMetric()

        def update(self, metric, record, net):
            seen["measuring"].append(_hooked(net))
            metric.update(record.logits.mean())

    model = make_model(digits)
    monitor = GeneralizationMonitor(budget=None, measures=[Hooks(), "tangent_sensitivity"], probe_size=50)
    trainer = make_trainer(tmp_path, [monitor, Spy()], max_epochs=2, limit_train_batches=3)
    trainer.fit(model, digits)
    assert seen["training"] and not any(seen["training"])  # the training forwards pay for no hook
    assert seen["measuring"] and all(seen["measuring"])
    assert not _hooked(model)


def test_general_measures_on_a_cnn_with_batchnorm_and_dropout(tmp_path):
    images = ArrayDataModule("digits", image=True)
    L.seed_everything(0, verbose=False)
    model = Classifier(small_cnn(1, 8, 10, width=8, batch_norm=True, dropout=0.3))
    general = [
        "output_sensitivity",
        "jacobian_norm",
        "fisher_rao_norm",
        "spectral_norm",
        "input_gradient_norm",
        "relative_flatness",
    ]
    monitor = GeneralizationMonitor(budget=None, measures=general, probe_size=128)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=2)
    trainer.fit(model, images)
    for name in general:
        key = f"gensens/{name}/pred_test_loss"
        assert math.isfinite(float(trainer.callback_metrics[key])), key
    assert model.training  # the model's mode is restored


@pytest.mark.parametrize("bar", ["tqdm", "rich"])
def test_epoch_end_work_shows_on_the_progress_bar(tmp_path, digits, bar, capsys):
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

    progress = TQDMProgressBar() if bar == "tqdm" else RichProgressBar()
    trainer = make_trainer(
        tmp_path,
        [GeneralizationMonitor(budget=None, measures=["linf_norm"], probe_size=300), progress],
        max_epochs=1,
        enable_progress_bar=True,
    )
    trainer.fit(make_model(digits), digits)
    if bar == "tqdm":
        assert "gensens" in capsys.readouterr().out
    assert "gensens/test_loss" in trainer.callback_metrics
