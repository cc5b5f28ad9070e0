"""Scoring the prediction benchmark's runs: the prediction keys of a run's history, each estimator's |predicted −
actual| test loss and error, and its skill against trivial's (1 − MAE/MAE(trivial)), under shift (each pool at the
end of training) and in distribution (over the last third of the epochs)."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from lightning_gensens.estimators import skill as _skill

PREFIX = "gensens"
TRIVIAL = "trivial"
RECOMMENDED = "recommended"
WIN = 0.2
KINDS = ("error", "loss")


@dataclass
class Run:
    """One run of a setup and seed: the monitor's history (the last-epoch measures' keys joined to its last row),
    which estimators need labels, its pools, its wall time and the warnings it raised."""

    setup: str
    seed: int
    history: list[dict[str, float]]
    needs_labels: dict[str, bool]
    pools: dict[str, tuple[str, str, int]]  # name: (family, kind, level)
    seconds: float
    warnings: list[str]


def parse(key: str) -> tuple[str, str, str] | None:
    """(group, estimator, kind) of a prediction key: group "" for the main group or a pool's name; the estimator
    :data:`RECOMMENDED` for the monitor's recommended keys (``gensens/[pool/<name>/]pred_test_<kind>``)."""
    parts = key.split("/")
    if parts[0] != PREFIX or not parts[-1].startswith("pred_test_"):
        return None
    kind = parts[-1][len("pred_test_") :]
    group, rest = (parts[2], parts[3:-1]) if parts[1] == "pool" and len(parts) > 3 else ("", parts[1:-1])
    if kind not in KINDS or len(rest) > 1:
        return None
    return group, rest[0] if rest else RECOMMENDED, kind


def estimators(runs: Iterable[Run], main: bool) -> list[str]:
    """Every estimator with a logged prediction in the main group (``main``) or in a pool; trivial first."""
    found = set()
    for run in runs:
        for row in run.history:
            for key in row:
                parsed = parse(key)
                if parsed is not None and (parsed[0] == "") == main:
                    found.add(parsed[1])
    return sorted(found, key=lambda e: (e != TRIVIAL, e == RECOMMENDED, e))


def _key(group: str, estimator: str, kind: str) -> str:
    pool = f"pool/{group}/" if group else ""
    name = "" if estimator == RECOMMENDED else f"{estimator}/"
    return f"{PREFIX}/{pool}{name}pred_test_{kind}"


def actual_key(group: str, kind: str) -> str:
    return f"{PREFIX}/pool/{group}/test_{kind}" if group else f"{PREFIX}/test_{kind}"


def reference_key(reference: str, kind: str) -> str:
    """The actual loss or error of the pools' reference: the validation data's (``""``) or the probe's."""
    return f"{PREFIX}/{reference}_{kind}" if reference else actual_key("", kind)


def _abs_error(row: dict[str, float], group: str, estimator: str, kind: str) -> float:
    pred, actual = row.get(_key(group, estimator, kind), math.nan), row.get(actual_key(group, kind), math.nan)
    return abs(pred - actual) if math.isfinite(pred) and math.isfinite(actual) else math.nan


def finite_mean(values: Iterable[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.nan


def _finite_median(values: Iterable[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


@dataclass(frozen=True)
class Item:
    """One pool of one run at one epoch (by default the last): an estimator's |error| and trivial's."""

    run: tuple[str, int]
    family: str
    kind: str
    level: int
    estimator: str
    quantity: str  # "error" or "loss"
    own: float
    trivial: float


def shift_items(runs: Sequence[Run], names: Sequence[str], epoch: int | None = None) -> list[Item]:
    items = []
    for run in runs:
        final = run.history[-1] if epoch is None else next((r for r in run.history if r["epoch"] == epoch), {})
        for pool, (family, kind, level) in run.pools.items():
            for quantity in KINDS:
                trivial = _abs_error(final, pool, TRIVIAL, quantity)
                for e in names:
                    own = _abs_error(final, pool, e, quantity)
                    if math.isfinite(own) and math.isfinite(trivial):
                        items.append(Item((run.setup, run.seed), family, kind, level, e, quantity, own, trivial))
    return items


def score(items: Sequence[Item]) -> dict[str, Any]:
    """Skill of the MAE over ``items`` against trivial's, the mean and median of each run's skill, the wins."""
    if not items:
        return {"skill": math.nan, "mean": math.nan, "median": math.nan, "wins": "—", "mae": math.nan, "n": 0}
    by_run = defaultdict(list)
    for item in items:
        by_run[item.run].append(item)

    def skill(some: Sequence[Item]) -> float:
        return _skill(statistics.fmean(i.own for i in some), statistics.fmean(i.trivial for i in some))

    per_run = [skill(some) for some in by_run.values()]
    wins = sum(i.own < i.trivial for i in items)
    return {
        "skill": skill(items),
        "mean": finite_mean(per_run),
        "median": _finite_median(per_run),
        "wins": f"{wins}/{len(items)}",
        "mae": statistics.fmean(i.own for i in items),
        "n": len(items),
    }


def in_distribution(run: Run, names: Sequence[str]) -> dict[str, dict[str, float]]:
    """{estimator: {"loss": MAE, "error": MAE}} over the last third of the run's measured epochs."""
    epochs = sorted({int(r["epoch"]) for r in run.history})
    last = set(epochs[len(epochs) - math.ceil(len(epochs) / 3) :])
    rows = [r for r in run.history if int(r["epoch"]) in last]
    return {e: {kind: finite_mean(_abs_error(r, "", e, kind) for r in rows) for kind in KINDS} for e in names}


def paired_skill(own: Sequence[float], trivial: Sequence[float]) -> float:
    """Skill of the mean of ``own`` against the mean of ``trivial`` over the same items (where ``own`` is finite)."""
    pairs = [(o, t) for o, t in zip(own, trivial, strict=True) if math.isfinite(o) and math.isfinite(t)]
    if not pairs:
        return math.nan
    return _skill(statistics.fmean(o for o, _ in pairs), statistics.fmean(t for _, t in pairs))


def aggregate(
    per_run: Sequence[tuple[str, dict[str, dict[str, float]]]], names: Sequence[str], needs: dict[str, bool]
) -> list[dict[str, Any]]:
    """Rows of the in-distribution table from each run's {estimator: {kind: MAE}} (tagged with its setup)."""
    setups = list(dict.fromkeys(setup for setup, _ in per_run))
    rows = []
    for e in names:
        row: dict[str, Any] = {"estimator": e, "needs_labels": needs.get(e, False)}
        for kind in KINDS:
            skills = [_skill(m[e][kind], m[TRIVIAL][kind]) for _, m in per_run]
            wins, scored = 0, 0
            for setup in setups:
                own = [m[e][kind] for s, m in per_run if s == setup]
                if any(map(math.isfinite, own)):
                    scored += 1
                    wins += paired_skill(own, [m[TRIVIAL][kind] for s, m in per_run if s == setup]) >= WIN
            row[f"mae_{kind}"] = finite_mean(m[e][kind] for _, m in per_run)
            row[f"skill_{kind}"] = finite_mean(skills) if e != TRIVIAL else 0.0
            row[f"median_skill_{kind}"] = _finite_median(skills)
            row[f"wins_{kind}"] = f"{wins}/{scored}" if scored else "—"
        row["runs"] = sum(any(math.isfinite(m[e][k]) for k in KINDS) for _, m in per_run)
        rows.append(row)
    return sorted(rows, key=_best_first)


def _best_first(row: dict[str, Any]) -> tuple[bool, bool, float]:
    """Estimators of the error first, then those of the loss only; higher skill first, NaN last."""
    error = row["skill_error"]
    skill = error if math.isfinite(error) else row["skill_loss"]
    return not math.isfinite(error), math.isnan(skill), 0.0 if math.isnan(skill) else -skill


def out_of_range(runs: Iterable[Run]) -> dict[str, list[int]]:
    """{estimator: [in distribution, in pools]}: its logged predicted test errors outside [0, 1], for every
    estimator that predicts an error."""
    counts: dict[str, list[int]] = {}
    for run in runs:
        for row in run.history:
            for key, value in row.items():
                parsed = parse(key)
                if parsed is not None and parsed[2] == "error":
                    counts.setdefault(parsed[1], [0, 0])[parsed[0] != ""] += not 0.0 <= value <= 1.0
    return counts
