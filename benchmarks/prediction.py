"""What the predictions are worth: which label-free estimator to trust for the loss and error of an unlabelled,
shifted pool, and every estimator's error in distribution, over several setups and seeds.

    python benchmarks/prediction.py [--quick] [--seeds 2] [--epochs 25] [--all-measures] [--probe-reference]
                                    [--out benchmarks/results/shift.md]

Four setups (MNIST-1D MLP 4×100 SGD and 3×256 Adam, digits MLP 4×100 SGD and 2×256 Adam) × --seeds. Each run
trains one setup with a `GeneralizationMonitor` (`budget=None`: every measure every epoch; a `CSVLogger` attached)
and hands it shifted pools as `unlabeled` (their labels only score, no estimator sees them; see `_shifts.py`):

- natural (MNIST-1D): the data regenerated with one of five generator parameters changed, 3 levels each, plus a
  control drawn anew with the default parameters;
- label (both datasets): class-imbalanced draws from the test split (Dirichlet, k classes kept, one dominant
  class), 3 levels each;
- corruption (digits): noise, blur, sub-pixel translation, contrast and occlusion of the inputs, 3 levels each.

The measures are the label-free baselines (`trivial`, `average_confidence`, `difference_of_confidences`, `atc`) and
`optimal_transport` where the package has it; `--all-measures` runs every default measure (slow: the sensitivity
measures then run on every pool too). From `monitor.history`:

- under shift, at the end of training, |predicted − actual| of each pool's test loss and error; skill = 1 −
  MAE/MAE(trivial) over pools × setups × seeds, trivial predicting pool = validation; the mean and median of each
  run's skill; wins = the share of pools where |error| < trivial's;
- in distribution, the MAE of the predicted versus actual test loss and error over the last third of the epochs,
  trivial predicting test = train (probe).

`--probe-reference` trains without a validation loop (`limit_val_batches=0`), so the pools are measured against the
training probe at the end of each epoch (trivial: pool = probe) and there is no in-distribution section.

Every estimator found in the history is scored, and the monitor's recommended per-pool keys
(`gensens/pool/<name>/pred_test_error|loss`) as the row `recommended`. Prints the tables and writes them, with the
configuration and wall time, to --out. `--quick` (1 seed, 6 epochs, 2 setups, pools of 300) is a smoke test of
about a minute; `--save-runs`/`--load-runs` keep the histories to re-score without training. Runs on one torch
thread by default (`--threads`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from _common import package_origin
from _shifts import (
    FAMILIES,
    HELD_OUT,
    LEVELS,
    NATURAL,
    NaturalShifts,
    Pool,
    corruptions,
    held_out_corruptions,
    label_shifts,
)
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from lightning_gensens import GeneralizationMonitor
from lightning_gensens.data import ArrayDataModule
from lightning_gensens.estimators import skill as _skill
from lightning_gensens.measures import MEASURES
from lightning_gensens.models import Classifier, mlp

PREFIX = "gensens"
TRIVIAL = "trivial"
RECOMMENDED = "recommended"
OT = "optimal_transport"
WIN = 0.2
KINDS = ("error", "loss")
CHEAP = (
    "trivial",
    "average_confidence",
    "difference_of_confidences",
    "atc",
    "temperature_scaling",
    OT,
    "shift_test",
    "aline",
)
FINAL = ("perturbation_disagreement",)
"""Measures run at the last epoch only, by a second monitor (96 forward passes per sample: every epoch would
multiply the benchmark's time); its keys join the last row of the history."""
FINAL_PREFIX = "final"
SHIFTED = tuple(FAMILIES)
COVARIATE = "natural + corruption"


@dataclass(frozen=True)
class Setup:
    name: str
    dataset: str
    description: str
    hidden: tuple[int, ...] = (100, 100, 100, 100)
    optimizer: str = "sgd"
    lr: float = 0.05
    weight_decay: float = 5e-4


ADAM = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0}
SETUPS = (
    Setup("mnist1d-mlp", "mnist1d", "MNIST-1D, MLP 4×100, SGD lr 0.05 wd 5e-4"),
    Setup("mnist1d-adam", "mnist1d", "MNIST-1D, MLP 3×256, Adam lr 1e-3 wd 0", (256,) * 3, **ADAM),
    Setup("digits-mlp", "digits", "digits, MLP 4×100, SGD lr 0.05 wd 5e-4"),
    Setup("digits-adam", "digits", "digits, MLP 2×256, Adam lr 1e-3 wd 0", (256,) * 2, **ADAM),
)
QUICK_SETUPS = ("mnist1d-mlp", "digits-mlp")


# -- data -----------------------------------------------------------------------------------------------------------
class Data:
    """One dataset's datamodule and its pools per seed, built once and shared by every run on it."""

    def __init__(self, name: str) -> None:
        self.module = ArrayDataModule(name)
        self.natural = NaturalShifts() if name == "mnist1d" else None
        self._pools: dict[int, list[Pool]] = {}

    def pools(self, seed: int, pool_size: int | None) -> list[Pool]:
        """The seed's pools: label shift and corruptions of the test split (or ``pool_size`` samples of it, one draw
        per seed), MNIST-1D regenerated (as many samples as the test split), then the held-out shifts."""
        if seed not in self._pools:
            x, y = self.module.val_set.tensors
            keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:pool_size]
            x, y = x[keep], y[keep]
            pools = label_shifts(x, y, self.module.num_classes, seed)
            if self.natural is not None:
                pools = self.natural.pools(seed, len(y)) + pools + self.natural.held_out(seed, len(y))
            else:
                pools = corruptions(x, y, seed) + pools + held_out_corruptions(x, y, seed)
            self._pools[seed] = pools
        return self._pools[seed]


# -- one run --------------------------------------------------------------------------------------------------------
@dataclass
class Run:
    setup: str
    seed: int
    history: list[dict[str, float]]
    needs_labels: dict[str, bool]
    pools: dict[str, tuple[str, str, int]]  # name: (family, kind, level)
    seconds: float
    warnings: list[str]


def fit(
    setup: Setup,
    data: Data,
    seed: int,
    epochs: int,
    probe_size: int,
    pool_size: int | None,
    measures: list[str] | None,
    probe_reference: bool = False,
) -> Run:
    """One run; with ``probe_reference`` no validation loop runs, so the pools are measured against the probe."""
    pools = data.pools(seed, pool_size)
    L.seed_everything(seed, verbose=False)
    net = mlp(data.module.num_features, data.module.num_classes, hidden=setup.hidden)
    model = Classifier(net, lr=setup.lr, weight_decay=setup.weight_decay, optimizer=setup.optimizer)
    loaders = {p.name: DataLoader(TensorDataset(p.x, p.y), batch_size=256) for p in pools}
    monitor = GeneralizationMonitor(measures, probe_size=probe_size, seed=seed, unlabeled=loaders, budget=None)
    finals = [m for m in FINAL if m in MEASURES and (measures is None or m not in measures)]
    callbacks = [monitor]
    if finals:
        recommend = dict.fromkeys(KINDS, finals[0])
        callbacks.append(
            GeneralizationMonitor(
                finals,
                probe_size=probe_size,
                seed=seed,
                unlabeled=loaders,
                budget=None,
                every_n_epochs=epochs,
                prefix=FINAL_PREFIX,
                recommend=recommend,
            )
        )
    with tempfile.TemporaryDirectory() as logs, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = L.Trainer(
            max_epochs=epochs,
            callbacks=callbacks,
            logger=CSVLogger(logs),
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            accelerator="cpu",
            devices=1,
            num_sanity_val_steps=0,
            limit_val_batches=0 if probe_reference else None,
        )
        start = time.perf_counter()
        trainer.fit(model, data.module)
        seconds = time.perf_counter() - start
    noise = ("num_workers", "does not have many workers", "log_every_n_steps", "sync_dist")
    messages = [str(w.message) for w in caught if not any(s in str(w.message) for s in noise)]
    needs = {row["estimator"]: bool(row["needs_labels"]) for cb in callbacks for row in cb.mae_table}
    history = list(monitor.history)
    for cb in callbacks[1:]:  # the last-epoch measures' predictions join the main monitor's last row
        for key, value in (cb.history[-1] if cb.history and history else {}).items():
            key = PREFIX + key[len(FINAL_PREFIX) :]
            parsed = parse(key)
            if (parsed is not None and parsed[1] != RECOMMENDED) or key.endswith("/seconds"):
                history[-1].setdefault(key, value)
    meta = {p.name: (p.family, p.kind, p.level) for p in pools}
    return Run(setup.name, seed, history, needs, meta, seconds, messages)


# -- scoring --------------------------------------------------------------------------------------------------------
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


def _actual(group: str, kind: str) -> str:
    return f"{PREFIX}/pool/{group}/test_{kind}" if group else f"{PREFIX}/test_{kind}"


def _reference(reference: str, kind: str) -> str:
    """The actual loss or error of the pools' reference: the validation data's (``""``) or the probe's."""
    return f"{PREFIX}/{reference}_{kind}" if reference else _actual("", kind)


def _abs_error(row: dict[str, float], group: str, estimator: str, kind: str) -> float:
    pred, actual = row.get(_key(group, estimator, kind), math.nan), row.get(_actual(group, kind), math.nan)
    return abs(pred - actual) if math.isfinite(pred) and math.isfinite(actual) else math.nan


def _finite_mean(values: Iterable[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.nan


def _finite_median(values: Iterable[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


@dataclass(frozen=True)
class Item:
    """One pool of one run at the end of training: an estimator's |error| and trivial's."""

    run: tuple[str, int]
    family: str
    kind: str
    level: int
    estimator: str
    quantity: str  # "error" or "loss"
    own: float
    trivial: float


def shift_items(runs: Sequence[Run], names: Sequence[str]) -> list[Item]:
    items = []
    for run in runs:
        final = run.history[-1]
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
        "mean": _finite_mean(per_run),
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
    return {e: {kind: _finite_mean(_abs_error(r, "", e, kind) for r in rows) for kind in KINDS} for e in names}


def _paired_skill(own: Sequence[float], trivial: Sequence[float]) -> float:
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
                    wins += _paired_skill(own, [m[TRIVIAL][kind] for s, m in per_run if s == setup]) >= WIN
            row[f"mae_{kind}"] = _finite_mean(m[e][kind] for _, m in per_run)
            row[f"skill_{kind}"] = _finite_mean(skills) if e != TRIVIAL else 0.0
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


# -- output ---------------------------------------------------------------------------------------------------------
def _fmt(value: Any, spec: str) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        if abs(value) >= 1e4:
            return f"{value:.2e}"
        return format(value, spec)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def markdown(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    lines = ["| " + " | ".join(title for _, title, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"`{row[k]}`" if k == "estimator" else _fmt(row[k], spec) for k, _, spec in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def by_column(names: Sequence[str], columns: Sequence[str], cell: Callable[[str, str], str]) -> str:
    lines = ["| estimator | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    lines += [f"| `{e}` | " + " | ".join(cell(e, c) for c in columns) + " |" for e in names]
    return "\n".join(lines)


IN_DISTRIBUTION_COLUMNS = (
    ("estimator", "estimator", "s"),
    ("needs_labels", "needs labels", "s"),
    ("mae_error", "mean MAE test error", ".4f"),
    ("skill_error", "mean skill (error)", "+.3f"),
    ("median_skill_error", "median skill (error)", "+.3f"),
    ("wins_error", "wins (error)", "s"),
    ("mae_loss", "mean MAE test loss", ".4f"),
    ("skill_loss", "mean skill (loss)", "+.3f"),
    ("median_skill_loss", "median skill (loss)", "+.3f"),
    ("wins_loss", "wins (loss)", "s"),
    ("runs", "runs", "d"),
)
SHIFT_COLUMNS = (
    ("estimator", "estimator", "s"),
    ("skill", "skill", "+.2f"),
    ("mean", "mean skill per run", "+.2f"),
    ("median", "median skill per run", "+.2f"),
    ("wins", "wins", "s"),
    ("mae", "MAE", ".3f"),
)


def shift_report(runs: Sequence[Run], names: Sequence[str]) -> list[str]:
    """The under-shift sections, for the error then the loss: the summary over every shifted pool, then the skill
    per family, per family and level, and per shift."""
    items = shift_items(runs, names)
    families = [f for f in (*SHIFTED, "control") if any(i.family == f for i in items)]
    families.insert(len(families) - ("control" in families), COVARIATE)  # the shifts that keep the class frequencies
    levels = [f"{f} {lv}" for f in SHIFTED for lv in LEVELS if any((i.family, i.level) == (f, lv) for i in items)]
    kinds = list(dict.fromkeys(i.kind for i in items))
    sections = []
    for quantity in KINDS:

        def pick(e: str, keep: Callable[[Item], bool], quantity: str = quantity) -> list[Item]:
            return [i for i in items if i.estimator == e and i.quantity == quantity and keep(i)]

        def family_cell(e: str, family: str) -> str:
            found = score(pick(e, lambda i: i.family in family.split(" + ")))
            return f"{_fmt(found['skill'], '+.2f')} ({found['wins']})" if found["n"] else "—"

        def level_cell(e: str, column: str) -> str:
            family, _, level = column.rpartition(" ")
            return _fmt(score(pick(e, lambda i: (i.family, i.level) == (family, int(level))))["skill"], "+.2f")

        def kind_cell(e: str, kind: str) -> str:
            return _fmt(score(pick(e, lambda i: i.kind == kind))["skill"], "+.2f")

        rows = [{"estimator": e, **score(pick(e, lambda i: i.family in SHIFTED))} for e in names]
        rows = sorted((r for r in rows if r["n"]), key=lambda r: (math.isnan(r["skill"]), -r["skill"]))
        order = [r["estimator"] for r in rows]
        sections += [
            f"### The test {quantity}",
            f"Over every shifted pool ({', '.join(SHIFTED)}; not the control), {quantity}:",
            markdown(rows, SHIFT_COLUMNS),
            f"Skill ({quantity}) per shift family (natural + corruption: every shift but the label shift), MAE over "
            "pools × setups × seeds (wins in brackets):",
            by_column(order, families, family_cell),
            f"Skill ({quantity}) per family and severity level:",
            by_column(order, levels, level_cell),
            f"Skill ({quantity}) per shift:",
            by_column(order, kinds, kind_cell),
        ]
    return sections


def severity_table(runs: Sequence[Run], reference: str = "") -> str:
    """Mean over runs of each pool's actual test error and loss minus the reference's (``""``: the validation data's,
    ``"train"``: the probe's)."""
    deltas: dict[tuple[str, int], list[tuple[float, float]]] = defaultdict(list)
    families = {}
    for run in runs:
        final = run.history[-1]
        for pool, (family, kind, level) in run.pools.items():
            families[kind] = family
            deltas[kind, level].append(
                tuple(
                    final.get(_actual(pool, q), math.nan) - final.get(_reference(reference, q), math.nan) for q in KINDS
                )
            )
    levels = sorted({lv for _, lv in deltas})
    lines = ["| family | shift | " + " | ".join(f"level {lv}" for lv in levels) + " |"]
    lines.append("|" + "---|" * (len(levels) + 2))
    for kind, family in families.items():
        cells = []
        for lv in levels:
            pairs = deltas.get((kind, lv), [])
            error, loss = (_finite_mean(p[j] for p in pairs) for j in range(2))
            cells.append(f"{_fmt(error, '+.3f')} / {_fmt(loss, '+.2f')}" if pairs else "")
        lines.append(f"| {family} | {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 seed, 6 epochs, 2 setups, pools of 300")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per setup (default 2; 1 with --quick)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (default 25; 6 with --quick)")
    parser.add_argument("--probe-size", type=int, default=1024, help="training samples in the monitor's probe")
    parser.add_argument("--pool-size", type=int, default=None, help="samples per pool (default the test split's)")
    parser.add_argument("--all-measures", action="store_true", help="every default measure, not the cheap ones")
    parser.add_argument(
        "--probe-reference",
        action="store_true",
        help="no validation loop (`limit_val_batches=0`): the pools are measured against the training probe",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on cores shared with other work, 2 threads ran 5x slower than 1)",
    )
    parser.add_argument("--save-runs", help="also write every run's history to this JSON file")
    parser.add_argument("--load-runs", help="score the runs of a --save-runs file instead of training")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "shift.md"))
    args = parser.parse_args()
    seeds = args.seeds or (1 if args.quick else 2)
    epochs = args.epochs or (6 if args.quick else 25)
    pool_size = args.pool_size or (300 if args.quick else None)
    setups = [s for s in SETUPS if not args.quick or s.name in QUICK_SETUPS]
    measures = None if args.all_measures else [m for m in CHEAP if m in MEASURES]
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)

    load = os.getloadavg()
    origin = package_origin()
    start = time.perf_counter()
    datasets: dict[str, Data] = {}
    runs: list[Run] = []
    total = len(setups) * seeds
    if args.load_runs:
        saved = json.loads(Path(args.load_runs).read_text())
        runs = [Run(**r) for r in saved["runs"]]
        meta = saved["meta"]
        setups = [s for s in SETUPS if any(r.setup == s.name for r in runs)]
        seeds, epochs = len({r.seed for r in runs}), max(int(r.history[-1]["epoch"]) + 1 for r in runs)
    for setup in setups if not runs else ():
        if setup.dataset not in datasets:
            datasets[setup.dataset] = Data(setup.dataset)
        for seed in range(seeds):
            run = fit(
                setup, datasets[setup.dataset], seed, epochs, args.probe_size, pool_size, measures, args.probe_reference
            )
            runs.append(run)
            final = run.history[-1] if run.history else {}
            by_family = defaultdict(list)
            for pool, (family, _, _) in run.pools.items():
                by_family[family].append(final.get(_actual(pool, "error"), math.nan))
            shifted = ", ".join(f"{f} {_finite_mean(v):.3f}" for f, v in by_family.items())
            print(
                f"[{len(runs):2d}/{total}] {setup.name:<13} seed {seed}: {run.seconds:6.1f} s, test error "
                f"{final.get(_actual('', 'error'), math.nan):.3f} (train "
                f"{final.get(f'{PREFIX}/train_error', math.nan):.3f}); mean pool error: {shifted}",
                flush=True,
            )
    if not args.load_runs:
        meta = {
            "command": " ".join(["python benchmarks/prediction.py", *sys.argv[1:]]),
            "wall": time.perf_counter() - start,
            "load": [load[0], os.getloadavg()[0]],
            "origin": origin,
            "threads": torch.get_num_threads(),
            "probe_size": args.probe_size,
            "pool_size": pool_size,
            "reference": "train" if args.probe_reference else "",
            "measures": (
                "every default measure"
                if measures is None
                else ", ".join(f"`{m}`" for m in measures)
                + " every epoch and "
                + ", ".join(f"`{m}`" for m in FINAL if m in MEASURES)
                + " at the last"
            ),
        }
    if args.save_runs:
        Path(args.save_runs).write_text(json.dumps({"runs": [asdict(r) for r in runs], "meta": meta}))
    wall = meta["wall"]
    reference = meta.get("reference", "")  # "" (validation data) or "train" (the probe, no validation loop)
    against = "the training probe's (no validation loop)" if reference else "the validation data's"

    needs: dict[str, bool] = {}
    for run in runs:
        for name, flag in run.needs_labels.items():
            needs[name.rpartition("/")[2]] = flag
    main_names = estimators(runs, main=True)
    pool_names = estimators(runs, main=False)
    indist = [(run.setup, in_distribution(run, main_names)) for run in runs]
    table_in = aggregate(indist, main_names, needs)
    shift_sections = shift_report(runs, pool_names)
    setup_names = [s.name for s in setups]

    def setup_skill(kind: str) -> Callable[[str, str], str]:
        def cell(e: str, setup: str) -> str:
            own = [m[e][kind] for s, m in indist if s == setup]
            return _fmt(_paired_skill(own, [m[TRIVIAL][kind] for s, m in indist if s == setup]), "+.2f")

        return cell

    final_errors = defaultdict(list)
    for run in runs:
        final = run.history[-1]
        final_errors[run.setup].append(
            (final.get(f"{PREFIX}/train_error", math.nan), final.get(_actual("", "error"), math.nan))
        )
    setup_lines = ["| setup | configuration | final train error | final test error |", "|---|---|---|---|"] + [
        f"| {s.name} | {s.description} | {_fmt(_finite_mean(a for a, _ in final_errors[s.name]), '.3f')} | "
        f"{_fmt(_finite_mean(b for _, b in final_errors[s.name]), '.3f')} |"
        for s in setups
    ]
    seconds = defaultdict(list)
    for run in runs:
        for row in run.history:
            for key, value in row.items():
                if key.endswith("/seconds"):
                    seconds[key.split("/")[1]].append(value)
    ranked = sorted(((statistics.fmean(v), name) for name, v in seconds.items()), reverse=True)
    costs = ", ".join(f"{name} {mean:.3f} s" for mean, name in ranked) or "not logged"
    pools_per_run = statistics.fmean(len(r.pools) for r in runs)
    ot_seconds = (
        f"`{OT}` took {statistics.fmean(seconds[OT]):.3f} s per measuring run (median "
        f"{statistics.median(seconds[OT]):.3f} s) over the validation data, the probe and {pools_per_run:.0f} pools: "
        f"{statistics.fmean(seconds[OT]) / pools_per_run * 1000:.1f} ms per pool."
        if seconds.get(OT)
        else f"`{OT}` did not run (no `{PREFIX}/{OT}/seconds` logged)."
    )
    outside_lines = ["| estimator | in distribution | in pools |", "|---|---|---|"] + [
        f"| `{e}` | {main} | {pool} |" for e, (main, pool) in sorted(out_of_range(runs).items())
    ]
    messages = sorted({m.splitlines()[0][:300] for run in runs for m in run.warnings})

    in_distribution_section = [
        "## In distribution (validation = test split), MAE over the last third of the measured epochs",
        "Trivial predicts test loss/error = the training probe's. Mean/median of per-run skills (setups × seeds); "
        f"wins = setups in which the skill of the seed-averaged MAE is ≥ {WIN}.",
        markdown(table_in, IN_DISTRIBUTION_COLUMNS),
        "Skill (error) per setup, seed-averaged MAE:",
        by_column([r["estimator"] for r in table_in], setup_names, setup_skill("error")),
        "Skill (loss) per setup, seed-averaged MAE:",
        by_column([r["estimator"] for r in table_in], setup_names, setup_skill("loss")),
    ]
    text = "\n\n".join(
        [
            "# Which label-free estimator to trust, under shift and in distribution",
            f"`{meta['command']}`: {len(setups)} setups × {seeds} seed(s), {epochs} epochs, measures "
            f"{meta['measures']} (`budget=None`, a `CSVLogger` attached), probe of "
            f"{meta['probe_size']} training samples, "
            + (f"pools of {meta['pool_size']} samples" if meta["pool_size"] else "pools as large as the test split")
            + f", torch {torch.__version__} with {meta['threads']} thread(s) on {os.cpu_count()} CPU cores "
            f"({platform.machine()}). Total wall time **{wall:.0f} s** ({wall / 60:.1f} min); load average "
            f"{meta['load'][0]:.1f} at the start, {meta['load'][1]:.1f} at the end (the cores were shared). Package: "
            f"{meta['origin']}.",
            "## Under shift, at the end of training (labels only score)",
            f"Trivial predicts each pool's test loss/error = {against}; `recommended` is the monitor's "
            "per-pool `pred_test_error|loss`. skill = 1 − MAE/MAE(trivial), both MAEs over pools × setups × seeds; "
            "mean/median skill per run = of each run's skill over its pools; wins = pools where |predicted − "
            "actual| < trivial's, of the pools the estimator predicted; MAE = mean |predicted − actual|.",
            *shift_sections,
            f"How strong the shifts are: mean over runs of the pool's test error / loss minus {against} at the end "
            "of training:",
            severity_table(runs, reference),
            "Predicted test errors outside [0, 1], every logged value (every epoch) of the runs:",
            "\n".join(outside_lines),
            *(in_distribution_section if not reference else []),
            "## Configuration",
            "\n".join(setup_lines),
            "Pools (`benchmarks/_shifts.py`): natural = MNIST-1D made by `mnist1d.data.make_dataset` with one "
            "argument changed (levels 1/2/3; defaults in brackets): "
            + ", ".join(f"`{k}` {'/'.join(map(str, v))}" for k, v in NATURAL.items())
            + " (`iid_noise_scale` 0.02, `corr_noise_scale` 0.25, `shear_scale` 0.75, `max_translation` 48, "
            "`scale_coeff` 0.4), generator seed 1000 + seed, z-scored with the training split's statistics; the "
            "control `fresh-0` is drawn the same way with the default arguments. Label = as many draws as the test "
            "split, with replacement, class by class: Dirichlet α 3/1/0.3, k = 5/3/2 random classes kept, one random "
            "class at 30/50/80%. Corruption (digits, on the z-scored inputs): gaussian noise σ 0.4/0.75/1.2, 1/2/3 "
            "passes of a 3×3 binomial blur, a ¼/½/1-pixel shift along a random axis (linear interpolation with a "
            "wrapping roll), contrast pulled to 70/40/20% around each image's mean, a random 3/4/5-pixel square "
            "set to 0. Held out (designed after the shift test's covariate estimate was chosen on the families "
            "above, one severity each): MNIST-1D with "
            + ", ".join(f"`{k}` {v}" for k, v in HELD_OUT["mnist1d"].items())
            + " (generator seed 2000 + seed; `+dirichlet`: a draw with Dirichlet(1) class proportions); digits "
            + ", ".join(f"`{k}` {v}" for k, v in HELD_OUT["digits"].items())
            + ". The data split is fixed; the seed sets initialisation, batch order, the probe draw and the pools.",
            "Measuring time per epoch (mean over runs, `gensens/<measure>/seconds`): " + costs + ". " + ot_seconds,
            "Per-run wall time: "
            + ", ".join(f"{s} {statistics.fmean([r.seconds for r in runs if r.setup == s]):.0f} s" for s in setup_names)
            + ".",
            "Warnings raised during the runs (first line, deduplicated):\n\n"
            + ("\n".join(f"- {m}" for m in messages) if messages else "- none"),
        ]
    )
    print("\n" + text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
