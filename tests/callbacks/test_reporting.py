"""The Report's MAE table with skill scores, its checkpoint round trip, the figure, and the end-to-end sinks."""

import csv
import math
import pickle

import matplotlib
import pytest
import torch

from lightning_gensens import GeneralizationMonitor
from lightning_gensens.callbacks.reporting import Report, format_table
from lightning_gensens.measures import Estimate, Trivial
from lightning_gensens.plotting import (
    ACTUAL,
    MAX_BEST,
    RECOMMENDED,
    TRAIN,
    TRIVIAL,
    plot_predictions,
    pool_series,
    prediction_series,
    predictions_figure,
    shown_series,
)
from tests.callbacks.conftest import TABLE_COLUMNS, make_model, make_trainer

COLUMNS = TABLE_COLUMNS


def _estimate(loss: float, error: float | None = None) -> Estimate:
    t = lambda v: None if v is None else torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return Estimate(t(loss), t(error))


def _scored(report: Report | None = None) -> Report:
    """Two runs with actual (loss, error) = (1.0, 0.2) then (2.0, 0.3)."""
    report = report or Report("gensens")
    runs = [
        # estimator: (predicted loss, predicted error), per run
        {"trivial": (0.6, 0.1), "good": (1.1, 0.25), "bad": (3.0, 0.5), "labelled": (0.9, None)},
        {"trivial": (1.4, 0.1), "good": (2.1, 0.35), "bad": (4.0, 0.6), "labelled": (2.3, None)},
    ]
    for epoch, ((actual_loss, actual_error), run) in enumerate(zip([(1.0, 0.2), (2.0, 0.3)], runs, strict=True)):
        for name, (loss, error) in run.items():
            report.score(name, _estimate(loss, error), actual_loss, actual_error, needs_labels=name == "labelled")
        report.record(epoch, {})
    return report


def test_table_has_skill_columns_sorted_best_first():
    table = _scored().table()
    assert all(list(row) == COLUMNS for row in table)
    rows = {row["estimator"]: row for row in table}
    # MAE of the loss: trivial (0.4 + 0.6)/2 = 0.5, good 0.1, bad 2.0, labelled (0.1 + 0.3)/2 = 0.2
    assert rows["trivial"]["mae_test_loss"] == pytest.approx(0.5)
    assert rows["good"]["skill_loss"] == pytest.approx(1 - 0.1 / 0.5)
    assert rows["labelled"]["skill_loss"] == pytest.approx(1 - 0.2 / 0.5)
    assert rows["bad"]["skill_loss"] == pytest.approx(1 - 2.0 / 0.5)
    # MAE of the error: trivial (0.1 + 0.2)/2 = 0.15, good 0.05, bad 0.3; labelled predicts no error
    assert rows["good"]["skill_error"] == pytest.approx(1 - 0.05 / 0.15)
    assert rows["bad"]["skill_error"] == pytest.approx(1 - 0.3 / 0.15)
    assert math.isnan(rows["labelled"]["mae_test_error"]) and math.isnan(rows["labelled"]["skill_error"])
    assert rows["trivial"]["skill_loss"] == 0.0 and rows["trivial"]["skill_error"] == 0.0  # exactly
    assert [row["estimator"] for row in table] == ["good", "labelled", "trivial", "bad"]
    assert {name: row["needs_labels"] for name, row in rows.items()} == {
        "trivial": False,
        "good": False,
        "bad": False,
        "labelled": True,
    }
    assert all(row["epochs"] == 2 for row in table)
    assert all(type(row["needs_labels"]) is bool and type(row["epochs"]) is int for row in table)


def test_skill_compares_only_the_runs_where_both_were_scored_and_timing_runs_are_not_scored():
    report = Report("p")
    for run, (trivial, estimate, scored) in enumerate([(0.5, None, True), (0.5, 0.1, False), (0.4, 0.2, True)]):
        report.score("trivial", _estimate(trivial), 1.0, math.nan)
        if estimate is not None:  # measured at runs 1 and 2; run 1 was a timing run on a few samples
            report.score("late", _estimate(estimate), 1.0, math.nan, scored=scored)
        report.record(run, {})
    report.score("early", _estimate(0.9), 1.0, math.nan)  # a run where trivial was not measured
    report.record(3, {})
    rows = {row["estimator"]: row for row in report.table()}
    assert rows["late"]["epochs"] == 1 and rows["late"]["mae_test_loss"] == pytest.approx(0.8)
    assert rows["late"]["skill_loss"] == pytest.approx(1 - 0.8 / 0.6)  # trivial over run 2 only: |0.4 − 1|
    assert rows["early"]["epochs"] == 0 and math.isnan(rows["early"]["skill_loss"])
    assert rows["trivial"]["epochs"] == 3 and rows["trivial"]["reliable"]
    assert not rows["late"]["reliable"]
    assert [row["estimator"] for row in report.table()][0] == "trivial"  # flagged rows sort last


def test_trivial_skill_is_exactly_zero_whatever_its_mae():
    report = Report("p")
    for actual in (0.3, 1.7, 0.123456789):
        report.score("trivial", _estimate(1.0 / 3.0, 0.1), actual, 0.2)
    (row,) = report.table()
    assert row["skill_loss"] == 0.0 and row["skill_error"] == 0.0
    assert Trivial.name == TRIVIAL == "trivial"


def test_skill_is_nan_without_trivial_and_rows_then_sort_by_mae():
    report = Report("p")
    for name, loss in (("b", 1.5), ("a", 1.2), ("c", math.nan)):
        report.score(name, _estimate(1.0), loss, math.nan)
    table = report.table()
    assert [row["estimator"] for row in table] == ["a", "b", "c"]  # by MAE, the one never scored last
    assert all(math.isnan(row["skill_loss"]) and math.isnan(row["skill_error"]) for row in table)


def test_skill_is_nan_where_trivial_is_perfect():
    report = Report("p")
    report.score("trivial", _estimate(1.0, 0.1), 1.0, 0.1)
    report.score("other", _estimate(1.5, 0.2), 1.0, 0.1)
    rows = {row["estimator"]: row for row in report.table()}
    assert rows["trivial"]["skill_loss"] == 0.0 and math.isnan(rows["other"]["skill_loss"])
    assert [row["estimator"] for row in report.table()] == ["trivial", "other"]


def test_needs_labels_defaults_to_false():
    report = Report("p")
    report.score("x", _estimate(1.0), 1.0, 0.1)
    assert report.table()[0]["needs_labels"] is False


def _plain(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return isinstance(value, (bool, int, float, str)) or value is None


def test_state_dict_round_trip_keeps_the_table_and_continues():
    report = _scored()
    report.record(0, {"gensens/test_loss": torch.tensor(1.0)})
    state = report.state_dict()
    assert _plain(state)
    pickle.loads(pickle.dumps(state))
    restored = Report("gensens")
    restored.load_state_dict(state)
    assert restored.table() == report.table()
    assert restored.history == report.history and restored.needs_labels == report.needs_labels
    # scoring a further run after the resume matches scoring it without one
    for r in (report, restored):
        r.score("trivial", _estimate(3.0, 0.3), 3.5, 0.3)
        r.score("good", _estimate(3.6, 0.3), 3.5, 0.3)
        r.score("labelled", _estimate(3.4), 3.5, 0.3, needs_labels=True)
    for a, b in zip(report.table(), restored.table(), strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], nan_ok=True), key
    assert {r["estimator"]: r["epochs"] for r in restored.table()}["good"] == 3


def test_old_checkpoints_without_needs_labels_load():
    state = _scored().state_dict()
    del state["needs_labels"]
    restored = Report("gensens")
    restored.load_state_dict(state)
    assert not any(row["needs_labels"] for row in restored.table())


def test_format_table_shows_every_column():
    text = format_table(_scored().table())
    header, _, *lines = text.splitlines()
    for title in ("estimator", "labels", "MAE test loss", "skill loss", "MAE test error", "skill error", "runs"):
        assert title in header
    assert lines[0].split()[0] == "good" and "yes" in lines[1] and "+0.000" in lines[2]
    assert "—" in lines[1]  # labelled predicts no error: no skill on it


def test_format_table_keeps_its_columns_aligned_for_long_names():
    report = _scored()
    long = "pool/a_very_long_pool_name/transport_loss"
    report.score(long, _estimate(1.0, 0.2), 1.0, 0.2)
    header, rule, *lines = format_table(report.table()).splitlines()
    assert {len(line) for line in lines} == {len(header)} == {len(rule)}  # every cell padded to its column's width
    (row,) = [line for line in lines if line.startswith(long)]
    assert row[len(long) : len(long) + 2] == "  " and row.split()[1] == "no"


def _history(names: list[str], epochs: int = 5) -> list[dict[str, float]]:
    rows = []
    for e in range(epochs):
        row = {"epoch": float(e), "gensens/test_loss": 2.0 - 0.1 * e, "gensens/train_loss": 1.5 - 0.2 * e}
        row.update({f"gensens/{n}/pred_test_loss": 1.0 + 0.1 * i + 0.01 * e for i, n in enumerate(names)})
        rows.append(row)
    return rows


def _table(skills: dict[str, float]) -> list[dict]:
    return [
        {"estimator": n, "needs_labels": False, "mae_test_loss": 1 - s, "skill_loss": s, "epochs": 5}
        for n, s in skills.items()
    ]


def test_shown_series_keeps_actual_trivial_and_the_best_few():
    skills = {"trivial": 0.0, "a": -0.5, "b": 0.4, "c": 0.1, "d": -2.0, "e": 0.3, "f": 0.2, "g": math.nan}
    history = _history(list(skills))
    assert set(shown_series(history)) == {ACTUAL, TRAIN, *skills}  # no table: everything
    shown = list(shown_series(history, table=_table(skills)))
    assert shown == [ACTUAL, TRIVIAL, "b", "e", "f", "c"] and len(shown) == 2 + MAX_BEST
    # without a trivial estimator: the probe's train loss is the reference curve, the best by MAE
    without = _table({"a": math.nan, "b": math.nan})
    without[0]["mae_test_loss"], without[1]["mae_test_loss"] = 0.5, 0.2
    assert list(shown_series(_history(["a", "b"]), table=without)) == [ACTUAL, TRAIN, "b", "a"]


def test_plot_with_and_without_table_keeps_the_backend(tmp_path):
    backend = matplotlib.get_backend()
    skills = {"trivial": 0.0, "a": -0.5, "b": 0.4, "c": -40.0, "d": math.nan}
    history = _history(list(skills))
    for name, table in (("all.png", None), ("best.png", _table(skills)), ("empty.png", [])):
        path = tmp_path / name
        assert plot_predictions(iter(history), str(path), table=table) == str(path)
        assert path.read_bytes()[:4] == b"\x89PNG"
    assert matplotlib.get_backend() == backend


def _logged(tmp_path) -> tuple[list[str], list[dict[str, str]]]:
    (path,) = tmp_path.glob("lightning_logs/version_*/metrics.csv")
    with open(path) as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_fit_logs_the_baselines_and_the_skill_table(tmp_path, digits):
    backend = matplotlib.get_backend()
    monitor = GeneralizationMonitor(budget=None, probe_size=200)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=2)
    trainer.fit(make_model(digits), digits)
    assert matplotlib.get_backend() == backend

    keys, rows = _logged(tmp_path)
    for name in ("trivial", "average_confidence", "difference_of_confidences", "atc"):
        for suffix in ("pred_test_loss", "pred_test_error", "mae", "train", "val"):
            key = f"gensens/{name}/{suffix}"
            assert key in keys, key
            assert all(math.isfinite(float(r[key])) for r in rows if r.get(key)), key
            assert sum(1 for r in rows if r.get(key)) == 2, key  # one point per validation epoch
    for name in ("average_confidence", "difference_of_confidences"):
        assert f"gensens/{name}/val_entropy" in keys
    probe = [
        (r["gensens/train_loss"], r["gensens/trivial/pred_test_loss"]) for r in rows if r.get("gensens/train_loss")
    ]
    assert probe and all(float(a) == pytest.approx(float(b)) for a, b in probe)

    table = monitor.mae_table
    assert all(list(row) == COLUMNS for row in table)
    by_name = {row["estimator"]: row for row in table}
    assert by_name["trivial"]["skill_loss"] == 0.0 and by_name["trivial"]["skill_error"] == 0.0
    assert not any(by_name[n]["needs_labels"] for n in ("trivial", "average_confidence", "atc"))
    # every estimator of the loss has a skill, best first (error-only ones, as cot's, have none on the loss)
    skills = [row["skill_loss"] for row in table if not math.isnan(row["mae_test_loss"])]
    assert skills == sorted(skills, reverse=True) and not any(math.isnan(skill) for skill in skills)

    (csv_path,) = tmp_path.glob("lightning_logs/version_*/gensens_mae.csv")
    with open(csv_path) as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        assert [r["estimator"] for r in reader] == [row["estimator"] for row in table]
    (png,) = tmp_path.glob("lightning_logs/version_*/gensens_predicted_vs_actual.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def _pool_history(epochs: int = 4) -> list[dict[str, float]]:
    rows = _history(["trivial", "a"], epochs)
    for e, row in enumerate(rows):
        row["gensens/pred_test_loss"] = 1.2  # a recommended key of the validation data: no estimator's curve
        row["gensens/pool/shifted/test_loss"] = 3.0 - 0.1 * e
        row["gensens/pool/shifted/trivial/pred_test_loss"] = 2.0
        row["gensens/pool/shifted/pred_test_loss"] = 2.5
        row["gensens/pool/shifted/atc/pred_test_loss"] = 2.4  # drawn as the recommended prediction only
        row["gensens/pool/noise/trivial/pred_test_loss"] = 1.8  # labels not held back, no recommended key
    return rows


def test_pool_series_has_each_pools_actual_trivial_and_recommended_curves():
    history = _pool_history()
    pools = pool_series(history)
    assert list(pools) == ["shifted", "noise"]
    assert list(pools["shifted"]) == [ACTUAL, TRIVIAL, RECOMMENDED] and list(pools["noise"]) == [TRIVIAL]
    assert pools["shifted"][RECOMMENDED] == ([0.0, 1.0, 2.0, 3.0], [2.5] * 4)
    assert set(prediction_series(history)) == {ACTUAL, TRAIN, "trivial", "a"}


def test_figure_has_a_panel_per_pool():
    table = _table({"trivial": 0.0, "a": 0.2, "pool/shifted/trivial": 0.0, "pool/shifted/atc": 0.1})
    fig = predictions_figure(iter(_pool_history()), table=table)
    assert [ax.get_title() for ax in fig.axes][1:] == ["pool shifted", "pool noise", ""]  # then the skill bars
    legends = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes[1:3]]
    assert legends == [
        ["actual loss (labels held back)", "trivial (= reference loss)", "recommended estimator"],
        ["trivial (= reference loss)"],
    ]


def test_under_a_budget_the_figure_is_drawn_only_where_the_allowance_left_covers_it_and_everything_is_counted(
    tmp_path, digits, caplog
):
    import logging

    monitor = GeneralizationMonitor(probe_size=256)  # the default budget: a 2-epoch fit leaves no 0.3 s
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        make_trainer(tmp_path, [monitor], max_epochs=2).fit(make_model(digits), digits)
    assert not list(tmp_path.rglob("*.png")) and list(tmp_path.rglob("gensens_mae.csv"))
    (said,) = [r.getMessage() for r in caplog.records if "predicted-versus-actual figure" in r.getMessage()]
    assert "plot_predictions(monitor.history" in said and "budget=None" in said
    sections = {row["measure"] for row in monitor.cost_table if row["measure"].startswith("monitor: ")}
    assert {"monitor: setup", "monitor: report", "monitor: probe", "monitor: logging"} <= sections
    total = sum(row["seconds"] for row in monitor.cost_table)
    assert total == pytest.approx(monitor.budget.measuring)  # the table adds up to the budget's account
    assert monitor.budget.closing == pytest.approx(  # the fit's final overhead: everything, over the training time
        monitor.budget.measuring / monitor.budget.training_time(), rel=0.2
    )
