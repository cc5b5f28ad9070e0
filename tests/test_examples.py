"""Smoke tests: every example runs (briefly) and produces what it promises."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import wandb

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["mlp_digits", "cnn_digits"])
def test_lightning_examples_produce_the_mae_table(name):
    table = _load(name).main(epochs=2)
    # a measure whose only run was its timing run (which of them the budget fits in two epochs depends on timing) has
    # a row without MAE; every estimator compared with trivial on at least one run has one
    scored = [row for row in table if row["epochs"] > 0]
    assert any(row["estimator"] == "trivial" for row in scored)
    assert all(math.isfinite(row["mae_test_loss"]) or math.isfinite(row["mae_test_error"]) for row in scored)


def test_ddp_example():
    metrics = _load("ddp_cpu").main(epochs=1)
    assert math.isfinite(metrics["gensens/test_loss"]) and math.isfinite(metrics["gensens/train_loss"])


def test_wandb_example(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    try:
        run_dir = Path(_load("wandb_offline").main(epochs=1, save_dir=str(tmp_path)))
    finally:
        wandb.teardown()
    assert list(run_dir.glob("run-*.wandb"))


def test_plain_pytorch_example():
    rows = _load("plain_pytorch").main(epochs=2)
    assert len(rows) == 2 and "linf_norm" in rows[1]
    assert all(math.isfinite(v) for row in rows for v in row.values())


def test_transformer_example(tmp_path, capsys):
    pytest.importorskip("transformers")
    table = _load("transformer_text").main(epochs=2, out=str(tmp_path))
    scored = [row for row in table if row["epochs"] > 0]
    assert scored and all(math.isfinite(row["mae_test_loss"]) or math.isfinite(row["mae_test_error"]) for row in scored)
    printed = capsys.readouterr().out
    ran = printed.split("measures that ran: ")[1].splitlines()[0].split(", ")
    assert {"trivial", "output_sensitivity", "jacobian_norm"} <= set(ran)
    assert not {"active_node_bound", "tangent_sensitivity", "region_sensitivity"} & set(ran)  # ReLU only
    assert (tmp_path / "metrics.csv").exists() and (tmp_path / "gensens_mae.csv").exists()


def test_no_validation_early_stopping_example(capsys):
    module = _load("no_validation_early_stopping")
    last = module.main(epochs=3)
    assert math.isfinite(last[module.KEY])
    best = capsys.readouterr().out.split(f"best {module.KEY} = ")[1].split()[0]
    assert math.isfinite(float(best))
