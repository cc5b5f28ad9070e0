"""The end-of-fit figure and MAE table in each logger's own form: TensorBoard's images and text, MLflow's
artifacts."""

import csv
import os

import lightning as L
import pytest
from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger

from lightning_gensens import GeneralizationMonitor
from tests.callbacks.conftest import make_model, make_trainer
from tests.test_plain_install import hide_matplotlib


def _fit(logger, digits) -> GeneralizationMonitor:
    monitor = GeneralizationMonitor(budget=None, probe_size=200)
    trainer = L.Trainer(
        max_epochs=2,
        callbacks=[monitor],
        logger=logger,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(make_model(digits), digits)
    return monitor


@pytest.mark.parametrize("matplotlib", [True, False], ids=["figure", "no-matplotlib"])
def test_tensorboard_gets_the_figure_and_the_markdown_table(tmp_path, digits, monkeypatch, matplotlib):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not matplotlib:
        hide_matplotlib(monkeypatch)
    logger = TensorBoardLogger(tmp_path)
    monitor = _fit(logger, digits)
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    assert ("gensens/predicted_vs_actual" in tags["images"]) is matplotlib
    (text,) = events.Tensors("gensens/mae_table/text_summary")
    markdown = text.tensor_proto.string_val[0].decode()
    assert all(f"| `{row['estimator']}` |" in markdown for row in monitor.mae_table)
    assert markdown.splitlines()[0].startswith("| estimator | labels | MAE test loss |")
    if matplotlib:
        (image,) = events.Images("gensens/predicted_vs_actual")
        assert image.encoded_image_string[:4] == b"\x89PNG" and image.width > 500
    assert len(list(tmp_path.rglob("gensens_predicted_vs_actual.png"))) == matplotlib


def test_mlflow_gets_the_figure_and_the_table_as_artifacts(tmp_path, digits, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this switch
    logger = MLFlowLogger(tracking_uri=(tmp_path / "mlruns").as_uri())
    monitor = _fit(logger, digits)
    artifacts = {a.path for a in logger.experiment.list_artifacts(logger.run_id)}
    assert {"gensens_predicted_vs_actual.png", "gensens_mae_table.json"} <= artifacts
    table = logger.experiment.load_table(logger.experiment_id, "gensens_mae_table.json", run_ids=[logger.run_id])
    assert list(table["estimator"]) == [row["estimator"] for row in monitor.mae_table]


def test_each_key_is_written_once_per_step(tmp_path, digits):
    """Lightning writes ``epoch`` with its own epoch-end values at the step our values go to; we do not repeat it."""
    monitor = GeneralizationMonitor()
    trainer = make_trainer(tmp_path, [monitor], max_epochs=3)
    trainer.fit(make_model(digits), digits)
    with open(os.path.join(trainer.logger.log_dir, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    ours = [row for row in rows if row.get("gensens/test_loss")]
    assert len(ours) == len({row["step"] for row in ours}) == len(monitor.history)  # one row per measured run
    assert all(not row["epoch"] for row in ours)
