"""Rank-correlation analysis of sensitivity measures over a family of trained models.

A single training run shows how well a measure tracks *one* model's test loss over epochs. Whether a measure
*ranks models* by how well they generalize is a different question, answered over a family of models trained
with different hyperparameters. Following Jiang et al., "Fantastic generalization measures and where to find
them" (ICLR 2020), :func:`evaluate` reports for every measure logged by
:class:`~lightning_gensens.GeneralizationMonitor`:

* Kendall's rank correlation τ between the measure and the generalization gap (test loss − train loss), and
  between the measure and the test loss, over all runs;
* the *granulated* Kendall coefficient: for each hyperparameter axis, the mean over all groups of runs that differ
  only in that axis of τ(measure, gap) within the group, and their mean Ψ over the axes;
* Pearson's ρ between log |measure| and log test loss, the linear relation on log-log axes that Forouzesh et al.
  ("Generalization comparison of deep neural networks via output sensitivity", ICPR 2020, Fig. 1) plot across a
  family of networks.
"""

from __future__ import annotations

import csv
import math
import os
import re
import warnings
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

#: Fewest runs over which a correlation across the family is reported; fewer give NaN.
MIN_RUNS = 3

Kind = Literal["measure", "estimator"]


@dataclass
class Run:
    """One finished training run: its monitor history, hyperparameters and a name.

    Args:
        history: one dict per measured epoch (``GeneralizationMonitor.history``), with ``"epoch"`` and float
            values of logged keys such as ``"gensens/test_loss"`` or ``"gensens/<measure>/val"``. Keys may be
            absent from some rows; NaN values count as absent.
        hparams: the run's hyperparameters, e.g. ``{"width": 128, "depth": 2, "seed": 0}``. Each key is an axis
            of the granulated Kendall coefficient.
        name: a label for printing.
    """

    history: list[dict[str, float]]
    hparams: dict[str, Any] = field(default_factory=dict)
    name: str = ""

    @classmethod
    def from_csv(
        cls,
        path: str | os.PathLike[str],
        hparams: Mapping[str, Any] | None = None,
        name: str | None = None,
        prefix: str = "gensens",
    ) -> Run:
        """Read a run from a Lightning ``CSVLogger`` ``metrics.csv`` file or the folder holding it.

        Lightning writes one row per logging call, leaving the other columns empty. Only epochs with a row that
        has ``<prefix>/test_loss`` are kept (the other rows are training logs), and the non-empty cells of all
        rows of such an epoch are merged into one history row; ``step`` is dropped.

        Args:
            path: a ``metrics.csv`` file, or a folder containing one (directly, or as its only one below).
            hparams: the run's hyperparameters; ``None`` reads the ``hparams.yaml`` next to ``metrics.csv``
                when there is one.
            name: the run's name; ``None`` uses the folder name.
            prefix: the monitor's logging prefix.
        """
        file = _find_metrics_csv(Path(path))
        epochs: dict[float, dict[str, float]] = {}
        measured: set[float] = set()
        with file.open(newline="") as f:
            for record in csv.DictReader(f):
                epoch = _parse_float(record.get("epoch"))
                if not math.isfinite(epoch):
                    continue
                row = epochs.setdefault(epoch, {"epoch": epoch})
                for key, cell in record.items():
                    value = _parse_float(cell)
                    if key is None or key in ("epoch", "step") or not math.isfinite(value):
                        continue
                    row[key] = value
                    if key == f"{prefix}/test_loss":
                        measured.add(epoch)
        history = [epochs[e] for e in sorted(measured)]
        if hparams is None:
            hparams = _read_hparams(file.parent / "hparams.yaml")
        return cls(history=history, hparams=dict(hparams), name=file.parent.name if name is None else name)

    def value(self, key: str, at: str | int = "last") -> float:
        """The value of ``key`` in the last row that has it (``at="last"``) or at epoch ``at``; NaN if absent."""
        rows: Iterable[dict[str, float]]
        if at == "last":
            rows = reversed(self.history)
        elif isinstance(at, int) and not isinstance(at, bool):
            rows = (r for r in self.history if r.get("epoch") == at)
        else:
            raise ValueError(f"at must be 'last' or an epoch number, got {at!r}.")
        for row in rows:
            value = _as_float(row.get(key))
            if math.isfinite(value):
                return value
        return math.nan

    def keys(self) -> set[str]:
        """Every key logged in some row of the history."""
        return set().union(*(r.keys() for r in self.history)) if self.history else set()


@dataclass
class SweepRow:
    """One measure's agreement with generalization across a family of runs (see :func:`evaluate`).

    Attributes:
        measure: the measure's name (``<measure>`` in ``<prefix>/<measure>/val``) or estimator's name.
        kind: ``"measure"`` for a raw measure value on validation data, ``"estimator"`` for an estimator's
            predicted test loss ``<prefix>/<estimator>/pred_test_loss``.
        kendall_gap: Kendall's τ_b between the measure and the generalization gap (test − train loss).
        kendall_test_loss: Kendall's τ_b between the measure and the test loss.
        granulated: per hyperparameter axis, the mean within-group τ_b(measure, gap) over the groups of runs that
            differ only in that axis (Jiang et al. 2020).
        psi: the mean of ``granulated`` over the axes (Jiang et al.'s Ψ).
        pearson_log: Pearson's ρ between log |measure| and log test loss over runs where both are positive.
        n_runs: number of runs in which the measure has a finite value.
    """

    measure: str
    kind: Kind
    kendall_gap: float
    kendall_test_loss: float
    granulated: dict[str, float]
    psi: float
    pearson_log: float
    n_runs: int


def evaluate(
    runs: Sequence[Run],
    prefix: str = "gensens",
    at: str | int = "last",
    axes: Sequence[str] | None = None,
) -> list[SweepRow]:
    """Rank correlations of every logged measure with generalization across ``runs`` (Jiang et al. 2020).

    Every ``<prefix>/<measure>/val`` key found in some run is a measure, and every
    ``<prefix>/<estimator>/pred_test_loss`` key an estimator, evaluated like a measure. Each value, as well as
    ``<prefix>/test_loss`` and ``<prefix>/train_loss``, is read from the last history row that has it
    (``at="last"``) or from the row of epoch ``at``. Runs with a missing or non-finite value are left out of each
    statistic they would enter; a statistic over fewer than :data:`MIN_RUNS` runs, or over constant values, is
    NaN. Never raises on degenerate input.

    Args:
        runs: the family of finished runs.
        prefix: the monitor's logging prefix.
        at: ``"last"`` or an epoch number.
        axes: hyperparameter axes of the granulated coefficient; ``None`` takes every hyperparameter key of the
            runs that takes more than one value among them.

    Returns:
        One :class:`SweepRow` per measure (sorted by name), then one per estimator (sorted by name).
    """
    keys: set[str] = set().union(*(r.keys() for r in runs)) if runs else set()
    p = re.escape(prefix)
    found: list[tuple[str, Kind, str]] = []
    kinds: tuple[tuple[str, Kind], ...] = (("val", "measure"), ("pred_test_loss", "estimator"))
    for suffix, kind in kinds:
        pattern = re.compile(rf"{p}/([^/]+)/{suffix}")
        names = sorted(m.group(1) for k in keys if (m := pattern.fullmatch(k)))
        found += [(name, kind, f"{prefix}/{name}/{suffix}") for name in names]

    test = [r.value(f"{prefix}/test_loss", at) for r in runs]
    gap = [t - r.value(f"{prefix}/train_loss", at) for r, t in zip(runs, test, strict=True)]
    axes = _varying_axes(runs) if axes is None else list(axes)
    rows = []
    for name, kind, key in found:
        values = [r.value(key, at) for r in runs]
        granulated = {axis: granulated_kendall(values, gap, [r.hparams for r in runs], axis) for axis in axes}
        finite_axes = [t for t in granulated.values() if math.isfinite(t)]
        logs = [
            (math.log(abs(v)), math.log(t))
            for v, t in zip(values, test, strict=True)
            if math.isfinite(v) and math.isfinite(t) and v != 0 and t > 0
        ]
        rows.append(
            SweepRow(
                measure=name,
                kind=kind,
                kendall_gap=_kendall(values, gap),
                kendall_test_loss=_kendall(values, test),
                granulated=granulated,
                psi=sum(finite_axes) / len(finite_axes) if finite_axes else math.nan,
                pearson_log=_pearson([a for a, _ in logs], [b for _, b in logs]),
                n_runs=sum(math.isfinite(v) for v in values),
            )
        )
    return rows


def granulated_kendall(
    values: Sequence[float], target: Sequence[float], hparams: Sequence[Mapping[str, Any]], axis: str
) -> float:
    """Jiang et al.'s granulated Kendall coefficient ψ for one hyperparameter ``axis``.

    Runs are grouped by the values of every *other* hyperparameter; within each group (runs that differ only in
    ``axis``) τ_b between ``values`` and ``target`` is computed over the runs with finite values in both, and ψ is
    the mean over the groups where it is defined (at least two runs that are not all tied). NaN if no group has a
    defined τ. Unlike the correlations across the whole family, a group of two runs counts: its τ is ±1 (or NaN
    for a tie), as in Jiang et al.'s grids where an axis often takes two values.
    """
    others = sorted({k for h in hparams for k in h} - {axis})
    groups: dict[tuple[Hashable, ...], list[int]] = {}
    for i, h in enumerate(hparams):
        groups.setdefault(tuple(_hashable(h.get(k)) for k in others), []).append(i)
    taus = []
    for members in groups.values():
        if len({_hashable(hparams[i].get(axis)) for i in members}) < 2:
            continue
        tau = _kendall([values[i] for i in members], [target[i] for i in members], min_runs=2)
        if math.isfinite(tau):
            taus.append(tau)
    return sum(taus) / len(taus) if taus else math.nan


def format_table(rows: Sequence[SweepRow]) -> str:
    """A plain-text table, one line per measure, sorted by |kendall_gap| descending (NaN last).

    Columns: the measure, its kind, the number of runs, Kendall τ with the gap and with the test loss, Ψ, the
    granulated τ per axis, and the Pearson ρ of the logs.
    """
    axes = sorted({a for r in rows for a in r.granulated})
    name = max([len("measure"), *(len(r.measure) for r in rows)]) + 2
    header = (
        f"{'measure':<{name}}{'kind':<11}{'runs':>5}{'kendall_gap':>13}{'kendall_test':>14}{'psi':>8}"
        + "".join(f"{'tau_' + a:>{max(10, len(a) + 6)}}" for a in axes)
        + f"{'pearson_log':>13}"
    )
    ordered = sorted(rows, key=lambda r: -abs(r.kendall_gap) if math.isfinite(r.kendall_gap) else math.inf)
    lines = [header, "-" * len(header)]
    for r in ordered:
        lines.append(
            f"{r.measure:<{name}}{r.kind:<11}{r.n_runs:>5}{_fmt(r.kendall_gap):>13}{_fmt(r.kendall_test_loss):>14}"
            f"{_fmt(r.psi):>8}"
            + "".join(f"{_fmt(r.granulated.get(a, math.nan)):>{max(10, len(a) + 6)}}" for a in axes)
            + f"{_fmt(r.pearson_log):>13}"
        )
    return "\n".join(lines)


def _kendall(x: Sequence[float], y: Sequence[float], min_runs: int = MIN_RUNS) -> float:
    """Kendall's τ_b over the pairs where both are finite; NaN for fewer than ``min_runs`` or constant input."""
    from scipy.stats import kendalltau

    pairs = [(a, b) for a, b in zip(x, y, strict=True) if math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < min_runs or len({a for a, _ in pairs}) < 2 or len({b for _, b in pairs}) < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(kendalltau([a for a, _ in pairs], [b for _, b in pairs]).statistic)


def _pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's ρ; NaN for fewer than :data:`MIN_RUNS` points or constant input."""
    from scipy.stats import pearsonr

    if len(x) < MIN_RUNS or len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(pearsonr(x, y).statistic)


def _varying_axes(runs: Sequence[Run]) -> list[str]:
    keys = sorted({k for r in runs for k in r.hparams})
    return [k for k in keys if len({_hashable(r.hparams.get(k)) for r in runs}) > 1]


def _hashable(value: Any) -> Hashable:
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _parse_float(cell: str | None) -> float:
    return _as_float(cell) if cell not in (None, "") else math.nan


def _fmt(value: float) -> str:
    return f"{value:.3f}" if math.isfinite(value) else "nan"


def _find_metrics_csv(path: Path) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if (path / "metrics.csv").is_file():
        return path / "metrics.csv"
    found = sorted(path.rglob("metrics.csv"))
    if len(found) != 1:
        raise FileNotFoundError(f"expected one metrics.csv under {path}, found {len(found)}: {found[:5]}")
    return found[0]


def _read_hparams(file: Path) -> dict[str, Any]:
    if not file.is_file():
        return {}
    from lightning.pytorch.core.saving import load_hparams_from_yaml

    loaded = load_hparams_from_yaml(file, use_omegaconf=False)
    return dict(loaded) if isinstance(loaded, Mapping) else {}
