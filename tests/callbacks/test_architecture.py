"""The orchestration contract: measure settings win over the monitor's, callbacks never share captures or keys,
a failing measure never breaks training, state keys come from the user's configuration, imports stay layered."""

import math
import subprocess
import sys

import pytest
import torch
from torchmetrics import MeanMetric

from lightning_gensens import GeneralizationMonitor, OutputSensitivity, measures
from lightning_gensens.measures import MEASURES, Estimate, Measure, Settings, register_measure
from tests.callbacks.conftest import make_model, make_trainer


def _fit(tmp_path, callbacks, digits, epochs=1):
    trainer = make_trainer(tmp_path, callbacks, max_epochs=epochs)
    trainer.fit(make_model(digits), digits)
    return trainer.callback_metrics


def test_a_measures_own_settings_win_and_unset_ones_inherit(tmp_path, digits):
    own = measures.OutputSensitivity(seed=5)
    assert own.settings(Settings(seed=0, loss_fn=torch.nn.functional.mse_loss)) == Settings(
        seed=5, loss_fn=torch.nn.functional.mse_loss
    )
    seeded = _fit(
        tmp_path / "a",
        [GeneralizationMonitor(budget=None, measures=[OutputSensitivity(seed=5)], probe_size=64)],
        digits,
    )
    same = _fit(tmp_path / "b", [GeneralizationMonitor(budget=None, measures=[own], probe_size=64, seed=1)], digits)
    other = _fit(
        tmp_path / "c", [GeneralizationMonitor(budget=None, measures=["output_sensitivity"], probe_size=64)], digits
    )
    key = "gensens/output_sensitivity/val"  # the validation value depends on the noise seed only
    assert float(seeded[key]) == float(same[key]) != float(other[key])


def test_monitor_settings_on_a_measure_callback_handed_to_a_monitor_are_refused():
    with pytest.raises(ValueError, match="probe_size"):
        GeneralizationMonitor(budget=None, measures=[OutputSensitivity(probe_size=10)])


def test_register_measure_refuses_a_taken_name():
    class Again(Measure):
        name = "output_sensitivity"

    with pytest.raises(ValueError, match="already registered"):
        register_measure(Again)
    with pytest.raises(TypeError):
        register_measure(OutputSensitivity)  # a callback, not a Measure


def test_state_key_comes_from_the_users_configuration_only():
    default = GeneralizationMonitor(budget=None).state_key

    @register_measure
    class Later(Measure):
        name = "added_in_a_later_release"

    try:
        assert GeneralizationMonitor(budget=None).state_key == default  # a release adding a measure keeps checkpoints
    finally:
        del MEASURES["added_in_a_later_release"]
    explicit = GeneralizationMonitor(budget=None, measures=["linf_norm"]).state_key
    assert explicit != default and "linf_norm" in explicit
    assert GeneralizationMonitor(budget=None, prefix="other").state_key != default


def test_callbacks_never_share_a_capture_a_record_or_a_key(tmp_path, digits):
    monitor = GeneralizationMonitor(budget=None, measures=["output_sensitivity", "jacobian_norm"], probe_size=64)
    after = OutputSensitivity(
        probe_size=64, prefix="solo", budget=None
    )  # listed after the monitor's noisy forward passes
    logged = _fit(tmp_path / "both", [monitor, after], digits)
    alone = _fit(tmp_path / "alone", [OutputSensitivity(probe_size=64, prefix="solo", budget=None)], digits)
    for key in ("solo/output_sensitivity/test_loss", "solo/output_sensitivity/val", "solo/output_sensitivity/train"):
        assert float(logged[key]) == float(alone[key]), key
    assert float(logged["solo/output_sensitivity/test_loss"]) == float(logged["gensens/test_loss"])
    with pytest.raises(ValueError, match="another `prefix=`"):
        _fit(
            tmp_path / "clash",
            [GeneralizationMonitor(budget=None, probe_size=64), OutputSensitivity(probe_size=64)],
            digits,
        )


class Exploding(Measure):
    """A measure that fails at its second update."""

    name = "exploding"

    def make_metric(self, net, settings):
        return MeanMetric()

    def update(self, metric, record, net):
        if metric.update_count >= 1:
            raise RuntimeError("boom")
        metric.update(record.logits.mean())

    def estimate(self, computed, reference):
        return {self.name: Estimate(reference.loss)}


def test_a_failing_measure_is_switched_off_with_one_warning_and_training_goes_on(tmp_path, digits):
    monitor = GeneralizationMonitor(budget=None, measures=[Exploding(), "output_sensitivity"], probe_size=300)
    with pytest.warns(UserWarning, match="exploding raised RuntimeError while updating .*boom") as caught:
        logged = _fit(tmp_path, [monitor], digits, epochs=2)
    assert sum("exploding" in str(w.message) for w in caught) == 1
    assert [m.name for m in monitor.active_measures] == ["output_sensitivity"]
    assert math.isfinite(float(logged["gensens/output_sensitivity/pred_test_loss"]))
    assert not any(k.startswith("gensens/exploding") for k in logged)
    with pytest.raises(RuntimeError, match="boom"):
        _fit(
            tmp_path / "strict",
            [GeneralizationMonitor(budget=None, measures=[Exploding()], probe_size=300, strict=True)],
            digits,
        )


class Unbuildable(Exploding):
    name = "unbuildable"

    def make_metric(self, net, settings):
        raise RuntimeError("no metric")


def test_a_measure_whose_metric_cannot_be_made_is_switched_off_at_its_first_run(tmp_path, digits):
    monitor = GeneralizationMonitor(budget=None, measures=[Unbuildable(), "trivial"], probe_size=64)
    with pytest.warns(UserWarning, match="unbuildable raised RuntimeError while creating its metrics: no metric"):
        logged = _fit(tmp_path, [monitor], digits, epochs=2)
    assert [m.name for m in monitor.active_measures] == ["trivial"]
    assert math.isfinite(float(logged["gensens/trivial/pred_test_loss"]))


def test_the_math_layers_import_without_lightning_wandb_or_sklearn():
    code = (
        "import sys, lightning_gensens.functional;"
        "bad = [m for m in ('lightning', 'wandb', 'sklearn', 'matplotlib') if m in sys.modules];"
        "import lightning_gensens.metrics, lightning_gensens.measures;"  # torchmetrics loads matplotlib if installed
        "bad += [m for m in ('lightning', 'wandb', 'sklearn') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_plotting_leaves_the_users_matplotlib_backend_alone(tmp_path):
    import matplotlib

    from lightning_gensens.plotting import plot_predictions

    before = matplotlib.get_backend()
    rows = [{"epoch": 0.0, "gensens/test_loss": 1.0, "gensens/x/pred_test_loss": 0.9}]
    plot_predictions(rows, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").exists() and matplotlib.get_backend() == before
