import pytest

from lightning_gensens.__main__ import main


@pytest.mark.parametrize("dataset", ["digits", "mnist1d"])
def test_demo_writes_logs_table_and_plot(tmp_path, capsys, dataset):
    assert (
        main(
            [
                "demo",
                "--dataset",
                dataset,
                "--epochs",
                "2",
                "--out",
                str(tmp_path),
                "--no-progress",
                "--probe-size",
                "256",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "epoch   1  test loss" in out and "mean absolute error" in out
    assert (tmp_path / "predicted_vs_actual.png").stat().st_size > 10_000
    (table,) = tmp_path.glob("csv/version_0/gensens_mae.csv")
    assert "linf_lognorm" in table.read_text()


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = capsys.readouterr().out
    for option in ("--dataset", "--epochs", "--probe-size", "--measures", "--out", "--wandb", "--seed"):
        assert option in out


def test_demo_wandb_runs_offline(tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login: offline
    try:
        assert (
            main(
                [
                    "demo",
                    "--epochs",
                    "1",
                    "--out",
                    str(tmp_path),
                    "--no-progress",
                    "--probe-size",
                    "128",
                    "--measures",
                    "output_sensitivity",
                    "--wandb",
                ]
            )
            == 0
        )
    finally:
        wandb.teardown()
    assert list(tmp_path.glob("**/offline-run-*/run-*.wandb"))
