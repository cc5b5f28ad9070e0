"""W&B as users view it, in offline mode: the run is read back from disk, nothing touches the network."""

import json
import math
import subprocess
import sys

import lightning as L
import pytest
import wandb
from lightning.pytorch.loggers import WandbLogger

from lightning_gensens import GeneralizationMonitor
from tests.callbacks.conftest import TABLE_COLUMNS, make_model

EPOCHS = 3


@pytest.fixture
def wandb_run_dir(tmp_path, monkeypatch, digits):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monitor = GeneralizationMonitor(budget=None, probe_size=200)
    trainer = L.Trainer(
        max_epochs=EPOCHS,
        callbacks=[monitor],
        logger=WandbLogger(save_dir=tmp_path, offline=True),
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    try:
        trainer.fit(make_model(digits), digits)
    finally:
        wandb.finish()
        wandb.teardown()
    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    return run_file.parent, monitor


def _records(run_dir) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_dir)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_offline_run_has_epoch_curves_chart_table_and_summary(wandb_run_dir):
    run_dir, monitor = wandb_run_dir
    records = _records(run_dir)
    history = [r["history"]["item"] for r in records if r.get("type") == "history"]
    defined = {r["metric"].get("name"): r["metric"].get("step_metric") for r in records if r.get("type") == "metric"}
    estimators = [row["estimator"] for row in monitor.mae_table]
    assert {"linf_norm", "linf_lognorm", "output_sensitivity", "output_sensitivity_label_free", "spectral_norm"} <= set(
        estimators
    )
    for row in monitor.mae_table:
        est = row["estimator"]
        key = f"gensens/{est}/pred_test_{'loss' if math.isfinite(row['mae_test_loss']) else 'error'}"
        points = [(h["epoch"], h[key]) for h in history if key in h]
        first = {"linf_norm": 1, "linf_lognorm": 1, "spectral_norm": 1, "aline": 2}.get(est, 0)  # runs it needs
        assert [e for e, _ in points] == list(range(first, EPOCHS)), est  # one point per validation epoch
        assert defined[key] == "epoch"
    assert defined["gensens/test_loss"] == "epoch"

    summary = {}
    for r in records:
        if r.get("type") == "summary":
            summary.update(r["summary"].get("update", {}))
    for row in (r for r in monitor.mae_table if math.isfinite(r["mae_test_loss"])):
        assert summary[f"gensens/{row['estimator']}/final_mae"] == pytest.approx(row["mae_test_loss"])

    (mae_file,) = run_dir.glob("files/media/table/gensens/mae_table_*.table.json")
    table = json.loads(mae_file.read_text())
    assert table["columns"] == TABLE_COLUMNS
    assert {row[0] for row in table["data"]} == set(estimators)

    (chart_file,) = run_dir.glob("files/media/table/gensens/predicted_vs_actual_table_*.table.json")
    chart = json.loads(chart_file.read_text())
    line_key = chart["columns"].index("lineKey")
    best = [est for est in estimators if est != "trivial"][:4]  # the table is sorted best first
    assert {row[line_key] for row in chart["data"]} == {"actual test loss", "trivial", *best}
