"""A plain install (no ``demo`` extra, so no matplotlib) fits and publishes everything but the figure."""

import csv
import logging
import subprocess
import sys

from tests.plain_fit import fit


def hide_matplotlib(monkeypatch) -> None:
    """Make matplotlib unimportable, as on a plain install, also where torchmetrics has imported it already."""
    for name in ["matplotlib", *(m for m in sys.modules if m.startswith("matplotlib."))]:
        monkeypatch.setitem(sys.modules, name, None)


def test_fit_without_matplotlib_writes_the_tables_and_skips_the_figure(tmp_path, monkeypatch, caplog):
    hide_matplotlib(monkeypatch)
    with caplog.at_level(logging.INFO):
        monitor, log_dir = fit(str(tmp_path))
    with open(f"{log_dir}/gensens_mae.csv") as f:
        assert [row["estimator"] for row in csv.DictReader(f)] == [row["estimator"] for row in monitor.mae_table]
    assert not list(tmp_path.rglob("*.png"))
    printed = [r.getMessage() for r in caplog.records if "mean absolute error" in r.getMessage()]
    assert len(printed) == 1 and "trivial" in printed[0]
    (skipped,) = [r.getMessage() for r in caplog.records if "matplotlib" in r.getMessage()]
    assert r'pip install "lightning-gensens[demo]"' in skipped


def test_package_imports_without_matplotlib():
    # torchmetrics imports matplotlib where it is installed: hide it after that, as a plain install lacks it
    code = (
        "import sys, torchmetrics\n"
        "for name in [m for m in sys.modules if m.split('.')[0] == 'matplotlib'] + ['matplotlib']:\n"
        "    sys.modules[name] = None\n"
        "from lightning_gensens import GeneralizationMonitor\n"
        "import lightning_gensens.callbacks.reporting\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
