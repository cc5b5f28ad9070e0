"""Every built-in measure is declared once (``lightning_gensens.registry.BUILT_IN``) and everything else follows:
its class in ``lightning_gensens.measures`` and ``MEASURES``, a callback of the same name in
``lightning_gensens.callbacks`` and at the top level, and a row in the README's measure table."""

import copy
import importlib
import pickle
import re
from pathlib import Path

import pytest

import lightning_gensens
from lightning_gensens import callbacks, measures
from lightning_gensens.callbacks import GeneralizationMonitor, MeasureCallback
from lightning_gensens.registry import BUILT_IN, BUILT_IN_NAMES

README = Path(__file__).parents[2] / "README.md"


def _readme_measure_rows() -> dict[str, str]:
    """The callback column of each row of the README's ``## Measures`` table, by its callback's name."""
    section = README.read_text(encoding="utf-8").split("\n## Measures\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    column = header.index("callback")
    found = {}
    for line in rows[2:]:  # below the header and its |---| line
        cell = line.strip("|").split("|")[column].strip()
        (name,) = re.fullmatch(r"`(\w+)`", cell).groups()
        found[name] = line
    return found


def test_the_registry_names_each_measure_once():
    assert len(set(BUILT_IN_NAMES)) == len(BUILT_IN_NAMES) == len({module for module, _ in BUILT_IN})


@pytest.mark.parametrize(("module", "name"), BUILT_IN, ids=BUILT_IN_NAMES)
def test_a_built_in_measure_has_its_class_callback_and_exports(module, name):
    cls = getattr(importlib.import_module(f"lightning_gensens.measures.{module}"), name)
    assert getattr(measures, name) is cls and name in measures.__all__
    assert measures.MEASURES[cls.name] is cls

    callback = getattr(callbacks, name)
    assert issubclass(callback, MeasureCallback) and callback.measure_class is cls
    assert callback.__name__ == callback.__qualname__ == name
    assert name in callbacks.__all__
    assert getattr(lightning_gensens, name) is callback and name in lightning_gensens.__all__
    assert name in dir(lightning_gensens)
    # the docstring names the measure and its paper's equation (the first line of the measure's module docstring)
    summary = importlib.import_module(cls.__module__).__doc__.split("\n\n")[0]
    assert f"lightning_gensens.measures.{name}`" in callback.__doc__
    assert " ".join(summary.split()) in callback.__doc__


def test_every_built_in_measure_has_a_row_in_the_readme():
    rows = _readme_measure_rows()
    assert set(rows) == set(BUILT_IN_NAMES), "README's measure table and lightning_gensens.registry differ"


def test_the_built_ins_come_first_and_in_order_in_measures():
    assert list(measures.MEASURES)[: len(BUILT_IN)] == [cls.name for cls in measures.BUILT_IN_MEASURES]
    assert [cls.__name__ for cls in measures.BUILT_IN_MEASURES] == list(BUILT_IN_NAMES)


def test_a_generated_callback_pickles_and_copies():
    from lightning_gensens import OutputSensitivity

    callback = OutputSensitivity(sigma=0.05, n_draws=2, probe_size=10, prefix="os")
    for copied in (pickle.loads(pickle.dumps(callback)), copy.deepcopy(callback)):
        assert type(copied) is OutputSensitivity
        assert isinstance(copied, MeasureCallback) and isinstance(copied, GeneralizationMonitor)
        assert (copied.measure.sigma, copied.measure.n_draws) == (0.05, 2)
        assert copied.monitor_settings == {"probe_size": 10, "prefix": "os"}
        assert (
            copied.state_key
            == callback.state_key
            == "OutputSensitivity{'prefix': 'os', 'measure': 'output_sensitivity'}"
        )


@pytest.mark.parametrize("name", BUILT_IN_NAMES)
def test_every_generated_callback_builds_with_its_defaults(name):
    callback = getattr(callbacks, name)()
    assert isinstance(callback.measure, callback.measure_class)
    assert [m.name for m in callback.measures] == [callback.measure.name]


def test_a_registered_measure_runs_by_default_without_a_callback():
    class Added(measures.Measure):
        name = "added_for_the_registry_test"

    try:
        measures.register_measure(Added)
        assert measures.MEASURES["added_for_the_registry_test"] is Added
        assert "added_for_the_registry_test" in [m.name for m in GeneralizationMonitor().measures]
        assert not hasattr(callbacks, "Added")  # no callback nor export: those are the built-ins'
    finally:
        del measures.MEASURES["added_for_the_registry_test"]
