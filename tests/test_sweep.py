import itertools
import logging
import math

import numpy as np
import pytest
from scipy.stats import kendalltau, pearsonr

from lightning_gensens.__main__ import main
from lightning_gensens.sweep import Run, SweepRow, evaluate, format_table, granulated_kendall

P = "gensens"


def _run(measure, test, train, hparams=None, name="", estimate=None, epochs=2):
    """A run whose last row holds the given values; earlier rows hold decoys that must be ignored."""
    history = [
        {"epoch": float(e), f"{P}/test_loss": 9.0, f"{P}/train_loss": 0.0, f"{P}/m/val": -5.0}
        for e in range(epochs - 1)
    ]
    last = {"epoch": float(epochs - 1), f"{P}/test_loss": test, f"{P}/train_loss": train, f"{P}/m/val": measure}
    if estimate is not None:
        last[f"{P}/est/pred_test_loss"] = estimate
    history.append(last)
    return Run(history, hparams or {}, name)


def _by_name(rows, kind="measure"):
    return {r.measure: r for r in rows if r.kind == kind}


def test_kendall_and_pearson_equal_scipy():
    rng = np.random.default_rng(0)
    measure, test, train, est = rng.random(7) + 0.1, rng.random(7) + 1.0, rng.random(7) * 0.5, rng.random(7) + 0.5
    runs = [_run(m, t, r, estimate=e) for m, t, r, e in zip(measure, test, train, est, strict=True)]
    rows = evaluate(runs)
    assert [(r.measure, r.kind) for r in rows] == [("m", "measure"), ("est", "estimator")]
    row = _by_name(rows)["m"]
    assert row.n_runs == 7
    assert row.kendall_gap == pytest.approx(kendalltau(measure, test - train).statistic)
    assert row.kendall_test_loss == pytest.approx(kendalltau(measure, test).statistic)
    assert row.pearson_log == pytest.approx(pearsonr(np.log(measure), np.log(test)).statistic)
    assert row.granulated == {} and math.isnan(row.psi)  # no hyperparameters, no axes
    est_row = _by_name(rows, "estimator")["est"]
    assert est_row.kendall_test_loss == pytest.approx(kendalltau(est, test).statistic)


def test_kendall_with_ties_is_tau_b_and_missing_values_are_skipped():
    measure = [1.0, 1.0, 2.0, 3.0, math.nan, 4.0]
    test = [1.0, 2.0, 2.0, 3.0, 5.0, 0.5]
    runs = [_run(m, t, 0.0, epochs=1) for m, t in zip(measure, test, strict=True)]  # no earlier row to fall back on
    runs.append(Run([{"epoch": 0.0, f"{P}/test_loss": 1.0}]))  # no measure at all
    row = _by_name(evaluate(runs))["m"]
    keep = [i for i, m in enumerate(measure) if not math.isnan(m)]
    expected = kendalltau([measure[i] for i in keep], [test[i] for i in keep], variant="b").statistic
    assert row.n_runs == 5
    assert row.kendall_test_loss == pytest.approx(expected)
    # |measure| and test loss both positive are required for the log correlation
    assert row.pearson_log == pytest.approx(
        pearsonr(np.log([measure[i] for i in keep]), np.log([test[i] for i in keep])).statistic
    )


def test_value_at_last_row_where_present_or_at_an_epoch():
    run = Run(
        [
            {"epoch": 0.0, "k": 1.0, "j": 5.0},
            {"epoch": 1.0, "k": 2.0},
            {"epoch": 2.0, "k": math.nan},
        ]
    )
    assert run.value("k") == 2.0 and run.value("j") == 5.0 and run.value("k", at=0) == 1.0
    assert math.isnan(run.value("missing")) and math.isnan(run.value("j", at=1))
    with pytest.raises(ValueError, match="at must be"):
        run.value("k", at="best")


def test_granulated_kendall_on_a_2x2x2_grid_by_hand():
    # axes a, b, c in {0, 1}; the measure and the gap are chosen so that each axis has a known sign pattern
    grid = list(itertools.product([0, 1], repeat=3))
    measure = {g: 1.0 + g[0] + 2 * g[1] + 4 * g[2] for g in grid}  # increasing in every axis, all distinct
    gap = {
        (0, 0, 0): 0.1,
        (1, 0, 0): 0.2,  # a: +1
        (0, 1, 0): 0.3,
        (1, 1, 0): 0.25,  # a: -1
        (0, 0, 1): 0.05,
        (1, 0, 1): 0.4,  # a: +1
        (0, 1, 1): 0.6,
        (1, 1, 1): 0.7,  # a: +1
    }
    runs = [_run(measure[g], 1.0 + gap[g], 1.0, dict(zip("abc", g, strict=True))) for g in grid]
    # hand computation: each group is a pair differing in one axis; its tau is the sign agreement of the pair
    hand = {}
    for i, axis in enumerate("abc"):
        signs = []
        for g in grid:
            if g[i] == 0:
                h = tuple(1 if j == i else v for j, v in enumerate(g))
                signs.append(np.sign((measure[h] - measure[g]) * (gap[h] - gap[g])))
        hand[axis] = float(np.mean(signs))
    assert hand == {"a": 0.5, "b": 1.0, "c": 0.5}
    row = _by_name(evaluate(runs))["m"]
    assert row.granulated == pytest.approx(hand)
    assert row.psi == pytest.approx(np.mean(list(hand.values())))
    assert evaluate(runs, axes=["b"])[0].granulated == pytest.approx({"b": 1.0})
    assert granulated_kendall(
        [measure[g] for g in grid], [gap[g] for g in grid], [dict(zip("abc", g, strict=True)) for g in grid], "a"
    ) == pytest.approx(0.5)


def test_granulated_kendall_with_three_values_per_axis():
    # one axis of 3 values and one of 2: groups of 3 runs, tau within each group as scipy computes it
    keys = list(itertools.product([1, 2, 3], [0, 1]))
    values = dict(zip(keys, [1.0, 2.0, 3.0, 1.5, 2.5, 0.5], strict=True))
    target = dict(zip(keys, [0.1, 0.3, 0.2, 0.4, 0.6, 0.5], strict=True))
    hparams = [{"width": w, "seed": s} for w, s in keys]
    got = granulated_kendall([values[k] for k in keys], [target[k] for k in keys], hparams, "width")
    taus = [
        kendalltau([values[(w, s)] for w in (1, 2, 3)], [target[(w, s)] for w in (1, 2, 3)]).statistic for s in (0, 1)
    ]
    assert got == pytest.approx(np.mean(taus))


def test_nan_safe_on_degenerate_families():
    constant = [_run(1.0, t, 0.0, {"w": i}) for i, t in enumerate([1.0, 2.0, 3.0, 4.0])]
    row = _by_name(evaluate(constant))["m"]
    assert math.isnan(row.kendall_gap) and math.isnan(row.kendall_test_loss) and math.isnan(row.pearson_log)
    assert math.isnan(row.psi) and math.isnan(row.granulated["w"])
    two = [_run(1.0, 2.0, 0.0, {"w": 0}), _run(2.0, 3.0, 0.0, {"w": 1})]
    row = _by_name(evaluate(two))["m"]
    assert math.isnan(row.kendall_gap) and math.isnan(row.kendall_test_loss) and math.isnan(row.pearson_log)
    assert row.granulated["w"] == 1.0  # a group of two runs differing in w is Jiang et al.'s smallest group
    no_train = [Run([{"epoch": 0.0, f"{P}/test_loss": t, f"{P}/m/val": m}]) for m, t in [(1, 1), (2, 3), (3, 2)]]
    row = _by_name(evaluate(no_train))["m"]
    assert math.isnan(row.kendall_gap) and row.kendall_test_loss == pytest.approx(1 / 3)
    assert evaluate([]) == [] and evaluate([Run([])]) == []
    assert "kendall" in format_table([])


def test_only_top_level_val_keys_are_measures():
    row = {
        "epoch": 0.0,
        f"{P}/test_loss": 1.0,
        f"{P}/a/val": 1.0,
        f"{P}/a/val/layer.1/trace": 2.0,  # a per-layer detail, not a measure
        f"{P}/a/val_q2": 3.0,
        f"{P}/a/train": 4.0,
        "other/b/val": 5.0,
    }
    rows = evaluate([Run([row])])
    assert [(r.measure, r.kind) for r in rows] == [("a", "measure")]
    assert [r.measure for r in evaluate([Run([{"x/a/val": 1.0}])], prefix="x")] == ["a"]


def test_from_csv_reads_lightning_metrics(tmp_path):
    folder = tmp_path / "lightning_logs" / "version_0"
    folder.mkdir(parents=True)
    (folder / "metrics.csv").write_text(
        "epoch,gensens/m/val,gensens/test_loss,gensens/train_loss,gensens/est/pred_test_loss,step,train/loss\n"
        "0,,,,,19,0.9\n"
        "0,0.5,1.2,1.0,,19,\n"
        "1,,,,,39,0.7\n"
        "1,0.7,1.1,0.8,,39,\n"
        "1,,,,1.05,39,\n"  # the same epoch logged in two rows: merged
        "2,,,,,59,0.6\n"  # a training log without a monitor row: not a history row
    )
    (folder / "hparams.yaml").write_text("width: 32\ndepth: 2\n")
    for path in (folder / "metrics.csv", folder, tmp_path):
        run = Run.from_csv(path)
        assert run.name == "version_0" and run.hparams == {"width": 32, "depth": 2}
        assert run.history == [
            {
                "epoch": 0.0,
                "gensens/m/val": 0.5,
                "gensens/test_loss": 1.2,
                "gensens/train_loss": 1.0,
                "train/loss": 0.9,
            },
            {
                "epoch": 1.0,
                "gensens/m/val": 0.7,
                "gensens/test_loss": 1.1,
                "gensens/train_loss": 0.8,
                "gensens/est/pred_test_loss": 1.05,
                "train/loss": 0.7,
            },
        ]
    run = Run.from_csv(folder, hparams={"seed": 3}, name="r")
    assert run.hparams == {"seed": 3} and run.name == "r"
    assert run.value("gensens/m/val") == 0.7
    with pytest.raises(FileNotFoundError):
        Run.from_csv(tmp_path / "nowhere")


def test_format_table_sorted_by_abs_kendall_gap():
    def row(name, tau, kind="measure"):
        return SweepRow(name, kind, tau, 0.0, {"width": 0.5, "depth": math.nan}, 0.5, 0.1, 4)

    rows = [row("weak", 0.1), row("none", math.nan), row("strong", -0.9), row("mid", 0.5, "estimator")]
    table = format_table(rows)
    lines = table.splitlines()
    assert "kendall" in lines[0] and "tau_width" in lines[0] and "tau_depth" in lines[0]
    body = [line for line in lines[1:] if not set(line) <= {"-"}]
    assert len(body) == len(rows)
    assert [line.split()[0] for line in body] == ["strong", "mid", "weak", "none"]
    assert "-0.900" in body[0] and "nan" in body[3]


def test_cli_sweep_trains_a_family_and_prints_the_table(capsys):
    level = logging.getLogger("lightning.pytorch").level
    assert (
        main(["sweep", "--dataset", "digits", "--widths", "16", "--depths", "1", "2", "--seeds", "0", "--epochs", "2"])
        == 0
    )
    out = capsys.readouterr().out
    assert "w16-d1-s0" in out and "w16-d2-s0" in out
    table = out[out.index("measure ") :].splitlines()
    assert "kendall" in table[0] and "tau_depth" in table[0]
    measures = [line.split()[0] for line in table[2:]]
    assert "output_sensitivity" in measures and len(measures) >= 2
    assert logging.getLogger("lightning.pytorch").level == level  # logging restored


def test_train_family_measures_the_last_epoch_and_restores_global_state():
    torch = pytest.importorskip("torch")
    from lightning_gensens.sweep import train_family

    levels = {n: logging.getLogger(n).level for n in ("lightning", "lightning.pytorch", "lightning.fabric")}
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    seen = []
    runs = train_family(
        widths=(8,), depths=(1,), seeds=(3,), epochs=3, measure_every=2, progress=lambda r, s: seen.append(r.name)
    )
    assert seen == ["w8-d1-s3"] and runs[0].hparams == {"width": 8, "depth": 1, "seed": 3}
    assert [row["epoch"] for row in runs[0].history] == [0.0, 2.0]  # counted back from the last epoch
    assert math.isfinite(runs[0].value("gensens/test_loss"))
    assert torch.equal(torch.get_rng_state(), rng) and torch.get_num_threads() == threads
    assert {n: logging.getLogger(n).level for n in levels} == levels
