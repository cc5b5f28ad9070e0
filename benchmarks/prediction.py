"""What the predictions are worth: every estimator's error against the actual test loss and error, in distribution
and under shift, over several setups and seeds.

    python benchmarks/prediction.py [--quick] [--seeds 3] [--epochs 30] [--out benchmarks/results/prediction.md]

Six setups (digits MLP and CNN, MNIST-1D MLP, MNIST-1D with 20% label noise, digits with 300 training samples,
MNIST-1D 6×256 Adam MLP) × --seeds. Each run trains one setup with a `GeneralizationMonitor` measuring every
measure every epoch (`budget=None`), with five shifted copies of the test split (gaussian noise, blur,
translation, contrast reduction, occlusion of the z-scored inputs) handed to it as `unlabeled` pools: their labels
only score, no estimator sees them. From `monitor.history`:

- in distribution, each estimator's MAE of the predicted versus actual test loss (and error) over the last third
  of the measured epochs, and its skill 1 − MAE/MAE(trivial), trivial predicting test = train (probe);
- under shift, at the end of training, |predicted − actual| of each pool's test loss (and error), averaged over
  the five pools, and the skill against the pool's trivial, which predicts shifted = validation.

Per run skills are averaged over setups × seeds; "wins" counts the setups in which the skill of the seed-averaged
MAE is at least 0.2. Prints the tables and writes them, with the configuration and wall time, to --out.
`--quick` (1 seed, 10 epochs, 2 setups) is a smoke test of about a minute; `--save-runs`/`--load-runs` keep the
histories to re-score without training. Runs on one torch thread by default (`--threads`).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from lightning_gensens import GeneralizationMonitor
from lightning_gensens.data import ArrayDataModule
from lightning_gensens.models import Classifier, mlp, small_cnn

PREFIX = "gensens"
TRIVIAL = "trivial"
WIN = 0.2
SHIFTS = ("noise", "blur", "translate", "contrast", "occlude")
CNN_WIDTH = 16


@dataclass(frozen=True)
class Setup:
    name: str
    dataset: str
    description: str
    image: bool = False
    hidden: tuple[int, ...] | None = (100, 100, 100, 100)  # None: small CNN
    optimizer: str = "sgd"
    lr: float = 0.05
    weight_decay: float = 5e-4
    label_noise: float = 0.0
    train_size: int | None = None
    batch_size: int = 64


SETUPS = (
    Setup("digits-mlp", "digits", "digits, MLP 4×100, SGD lr 0.05 wd 5e-4"),
    Setup("digits-cnn", "digits", "digits 1×8×8, small CNN (width 16, BatchNorm), SGD lr 0.05 wd 5e-4", True, None),
    Setup("mnist1d-mlp", "mnist1d", "MNIST-1D, MLP 4×100, SGD lr 0.05 wd 5e-4"),
    Setup("mnist1d-noisy", "mnist1d", "MNIST-1D, 20% of training labels random, MLP 4×100, SGD", label_noise=0.2),
    Setup(  # batch 16: about as many steps per epoch (19) as the full training set at batch 64 (20)
        "digits-300", "digits", "digits, 300 training samples, MLP 4×100, SGD, batch 16", train_size=300, batch_size=16
    ),
    Setup(
        "mnist1d-adam",
        "mnist1d",
        "MNIST-1D, MLP 6×256, Adam lr 1e-3 wd 0",
        hidden=(256,) * 6,
        optimizer="adam",
        lr=1e-3,
        weight_decay=0.0,
    ),
)
QUICK_SETUPS = ("digits-mlp", "digits-cnn")


# -- data -----------------------------------------------------------------------------------------------------------
def _shift_rows(x: Tensor, shifts: Tensor) -> Tensor:
    """Shift each 1-D signal by its own amount, repeating the edge value (no wrap-around)."""
    n = x.shape[1]
    source = (torch.arange(n).view(1, n) - shifts.view(-1, 1)).clamp(0, n - 1)
    return torch.gather(x, 1, source)


def shifted_pools(x: Tensor, image: bool, seed: int) -> dict[str, Tensor]:
    """Five corrupted copies of the z-scored test inputs ``x`` (N × features; digits as 8×8 images, MNIST-1D as
    40-sample signals). Corrupting the network's (z-scored) input rather than the raw pixels keeps the severities
    comparable: a raw corruption of digits' near-constant border pixels is blown up 10–100× by the z-scoring."""
    g = torch.Generator().manual_seed(10_000 + seed)
    n = x.shape[0]
    out = {"noise": x + 0.75 * torch.randn(x.shape, generator=g)}
    sign = 2 * torch.randint(0, 2, (n,), generator=g) - 1
    if image:
        img = x.view(n, 1, 8, 8)
        kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
        out["blur"] = F.conv2d(F.pad(img, (1, 1, 1, 1), mode="replicate"), kernel.view(1, 1, 3, 3)).view(n, -1)
        axis = (torch.rand(n, generator=g) < 0.5).long()
        rolled = [torch.roll(im, int(s), dims=int(a)) for im, s, a in zip(img[:, 0], sign, axis, strict=True)]
        out["translate"] = torch.stack(rolled).reshape(n, -1)
    else:
        kernel = torch.tensor([1.0, 2.0, 3.0, 2.0, 1.0]) / 9
        out["blur"] = F.conv1d(F.pad(x.view(n, 1, -1), (2, 2), mode="replicate"), kernel.view(1, 1, 5)).view(n, -1)
        out["translate"] = _shift_rows(x, sign * torch.randint(2, 6, (n,), generator=g))
    mean = x.mean(dim=1, keepdim=True)
    out["contrast"] = mean + 0.4 * (x - mean)
    occluded = x.clone()
    if image:
        corner = torch.randint(0, 8 - 4 + 1, (2, n), generator=g).tolist()
        view = occluded.view(n, 8, 8)
        for i, (r, c) in enumerate(zip(*corner, strict=True)):
            view[i, r : r + 4, c : c + 4] = 0.0
    else:
        for i, start in enumerate(torch.randint(0, 40 - 10 + 1, (n,), generator=g).tolist()):
            occluded[i, start : start + 10] = 0.0
    out["occlude"] = occluded
    return out


class Data:
    """One dataset's datamodule, built once and shared by every run on it."""

    def __init__(self, name: str, image: bool) -> None:
        self.module = ArrayDataModule(name, image=image)
        self.image = image

    def for_run(self, setup: Setup, seed: int, pool_size: int | None) -> tuple[ArrayDataModule, dict[str, DataLoader]]:
        """The run's training set (subset, label noise) and its shifted pools: the test split (or ``pool_size``
        samples of it, one draw per seed, the same for every shift), corrupted."""
        g = torch.Generator().manual_seed(seed)
        x, y = self.module.train_set.tensors
        if setup.train_size is not None:
            keep = torch.randperm(len(y), generator=g)[: setup.train_size]
            x, y = x[keep], y[keep]
        if setup.label_noise > 0:
            k = self.module.num_classes
            flip = torch.rand(len(y), generator=g) < setup.label_noise
            y = torch.where(flip, (y + torch.randint(1, k, y.shape, generator=g)) % k, y)
        data = copy.copy(self.module)
        data.train_set, data.batch_size = TensorDataset(x, y), setup.batch_size
        x_test, y_test = self.module.val_set.tensors
        keep = torch.randperm(len(y_test), generator=g)[:pool_size]
        x_test, y_test = x_test[keep], y_test[keep]
        pools = {
            name: DataLoader(TensorDataset(z.reshape(x_test.shape), y_test), batch_size=256)
            for name, z in shifted_pools(x_test.reshape(len(x_test), -1), self.image, seed).items()
        }
        return data, pools


# -- one run --------------------------------------------------------------------------------------------------------
@dataclass
class Run:
    setup: str
    seed: int
    history: list[dict[str, float]]
    needs_labels: dict[str, bool]
    seconds: float
    warnings: list[str]


def fit(setup: Setup, data: Data, seed: int, epochs: int, probe_size: int, pool_size: int | None) -> Run:
    datamodule, pools = data.for_run(setup, seed, pool_size)
    L.seed_everything(seed, verbose=False)
    if setup.hidden is None:
        net = small_cnn(1, 8, datamodule.num_classes, width=CNN_WIDTH, batch_norm=True)
    else:
        net = mlp(datamodule.num_features, datamodule.num_classes, hidden=setup.hidden)
    model = Classifier(net, lr=setup.lr, weight_decay=setup.weight_decay, optimizer=setup.optimizer)
    # every measure, every epoch
    monitor = GeneralizationMonitor(probe_size=probe_size, seed=seed, unlabeled=pools, budget=None)
    trainer = L.Trainer(
        max_epochs=epochs,
        callbacks=[monitor],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, datamodule)
    seconds = time.perf_counter() - start
    noise = ("num_workers", "does not have many workers", "log_every_n_steps", "sync_dist")
    messages = [str(w.message) for w in caught if not any(s in str(w.message) for s in noise)]
    needs = {row["estimator"]: bool(row["needs_labels"]) for row in monitor.mae_table}
    return Run(setup.name, seed, list(monitor.history), needs, seconds, messages)


# -- scoring --------------------------------------------------------------------------------------------------------
def estimators(runs: Sequence[Run], group: str = "") -> list[str]:
    """Every estimator with a logged prediction in ``group`` ("" for the main group, "pool/<name>/" for a pool)."""
    found = set()
    for run in runs:
        for row in run.history:
            for key in row:
                head, _, tail = key.rpartition("/")
                if tail == "pred_test_loss" and head.startswith(f"{PREFIX}/{group}"):
                    name = head[len(f"{PREFIX}/{group}") :]
                    if "/" not in name:
                        found.add(name)
    return sorted(found)


def _mae(rows: Sequence[dict[str, float]], pred: str, actual: str) -> float:
    errors = [
        abs(r[pred] - r[actual])
        for r in rows
        if pred in r and actual in r and math.isfinite(r[pred]) and math.isfinite(r[actual])
    ]
    return statistics.fmean(errors) if errors else math.nan


def in_distribution(run: Run, names: Sequence[str]) -> dict[str, dict[str, float]]:
    """{estimator: {"loss": MAE, "error": MAE}} over the last third of the run's measured epochs."""
    epochs = sorted({int(r["epoch"]) for r in run.history})
    last = set(epochs[len(epochs) - math.ceil(len(epochs) / 3) :])
    rows = [r for r in run.history if int(r["epoch"]) in last]
    return {
        e: {kind: _mae(rows, f"{PREFIX}/{e}/pred_test_{kind}", f"{PREFIX}/test_{kind}") for kind in ("loss", "error")}
        for e in names
    }


def under_shift(run: Run, names: Sequence[str]) -> dict[str, dict[str, dict[str, float]]]:
    """{pool: {estimator: {"loss": |err|, "error": |err|}}} at the run's last measured epoch."""
    final = run.history[-1]
    return {
        pool: {
            e: {
                kind: _mae([final], f"{PREFIX}/pool/{pool}/{e}/pred_test_{kind}", f"{PREFIX}/pool/{pool}/test_{kind}")
                for kind in ("loss", "error")
            }
            for e in names
        }
        for pool in SHIFTS
    }


def gaps(run: Run, names: Sequence[str]) -> dict[str, int]:
    """Per estimator that predicted in this run, the measured epochs (after the first, which time-ratio estimators
    skip) with an actual test loss but no finite predicted one: a NaN/Inf prediction (not logged) or a measure
    switched off."""
    rows = [r for r in run.history[1:] if math.isfinite(r.get(f"{PREFIX}/test_loss", math.nan))]
    names = [e for e in names if any(f"{PREFIX}/{e}/pred_test_loss" in r for r in run.history)]  # defined here
    return {e: sum(not math.isfinite(r.get(f"{PREFIX}/{e}/pred_test_loss", math.nan)) for r in rows) for e in names}


def out_of_range(run: Run, names: Sequence[str]) -> dict[str, int]:
    """Per estimator, logged predicted test errors outside [0, 1] (main group and pools)."""
    counts = dict.fromkeys(names, 0)
    for row in run.history:
        for key, value in row.items():
            if key.endswith("/pred_test_error") and not 0.0 <= value <= 1.0:
                name = key.rpartition("/")[0].rpartition("/")[2]
                counts[name] = counts.get(name, 0) + 1
    return counts


def _skill(mae: float, trivial: float) -> float:
    if not (math.isfinite(mae) and math.isfinite(trivial)) or trivial <= 0:
        return math.nan
    return 1.0 - mae / trivial


def _paired_skill(own: Sequence[float], trivial: Sequence[float]) -> float:
    """Skill of the mean of ``own`` against the mean of ``trivial`` over the same items (where ``own`` is finite)."""
    pairs = [(o, t) for o, t in zip(own, trivial, strict=True) if math.isfinite(o) and math.isfinite(t)]
    if not pairs:
        return math.nan
    return _skill(statistics.fmean(o for o, _ in pairs), statistics.fmean(t for _, t in pairs))


def _finite_mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.nan


def aggregate(
    per_run: Sequence[tuple[str, dict[str, dict[str, float]]]], names: Sequence[str], needs: dict[str, bool]
) -> list[dict[str, Any]]:
    """Rows of the summary table from each run's {estimator: {kind: MAE}} (tagged with its setup)."""
    setups = list(dict.fromkeys(setup for setup, _ in per_run))
    rows = []
    for e in names:
        row: dict[str, Any] = {"estimator": e, "needs_labels": needs.get(e, False)}
        for kind in ("loss", "error"):
            maes = [m[e][kind] for _, m in per_run]
            skills = [_skill(m[e][kind], m[TRIVIAL][kind]) for _, m in per_run]
            wins, scored = 0, 0
            for setup in setups:
                own = [m[e][kind] for s, m in per_run if s == setup]
                skill = _paired_skill(own, [m[TRIVIAL][kind] for s, m in per_run if s == setup])
                if any(map(math.isfinite, own)):
                    scored += 1
                    wins += skill >= WIN
            row[f"mae_{kind}"] = _finite_mean(maes)
            row[f"skill_{kind}"] = _finite_mean(skills) if e != TRIVIAL else 0.0
            row[f"median_skill_{kind}"] = (
                statistics.median([s for s in skills if math.isfinite(s)])
                if any(map(math.isfinite, skills))
                else math.nan
            )
            row[f"wins_{kind}"] = f"{wins}/{scored}" if scored else "—"
        row["runs"] = sum(math.isfinite(m[e]["loss"]) for _, m in per_run)
        rows.append(row)
    return sorted(
        rows, key=lambda r: (math.isnan(r["skill_loss"]), 0.0 if math.isnan(r["skill_loss"]) else -r["skill_loss"])
    )


def package_origin() -> str:
    """Where ``lightning_gensens`` was imported from, with the repository's commit and whether it was modified."""
    import subprocess

    import lightning_gensens

    root = Path(lightning_gensens.__file__).resolve().parent
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "lightning_gensens"], capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"`{root}`"
    if root == repo / "lightning_gensens":
        return f"this checkout at {commit}" + (" with uncommitted changes to `lightning_gensens/`" if dirty else "")
    return f"`{root}`, not this checkout's (which is at {commit})"


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


SUMMARY_COLUMNS = (
    ("estimator", "estimator", "s"),
    ("needs_labels", "needs labels", "s"),
    ("mae_loss", "mean MAE test loss", ".4f"),
    ("skill_loss", "mean skill (loss)", "+.3f"),
    ("median_skill_loss", "median skill (loss)", "+.3f"),
    ("wins_loss", "wins (loss)", "s"),
    ("mae_error", "mean MAE test error", ".4f"),
    ("skill_error", "mean skill (error)", "+.3f"),
    ("median_skill_error", "median skill (error)", "+.3f"),
    ("wins_error", "wins (error)", "s"),
    ("runs", "runs", "d"),
)


def markdown(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    lines = ["| " + " | ".join(title for _, title, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"`{row[k]}`" if k == "estimator" else _fmt(row[k], spec) for k, _, spec in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def by_column(
    names: Sequence[str],
    columns: Sequence[str],
    cell: Callable[[str, str], float],
    spec: str = "+.2f",
) -> str:
    lines = ["| estimator | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for e in names:
        lines.append(f"| `{e}` | " + " | ".join(_fmt(cell(e, c), spec) for c in columns) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 seed, 10 epochs, 2 setups")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per setup (default 3; 1 with --quick)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (default 30; 10 with --quick)")
    parser.add_argument("--probe-size", type=int, default=1024, help="training samples in the monitor's probe")
    parser.add_argument("--pool-size", type=int, default=None, help="test samples per shifted pool (default all)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on cores shared with other work, 2 threads ran 5x slower than 1)",
    )
    parser.add_argument("--save-runs", help="also write every run's history to this JSON file")
    parser.add_argument("--load-runs", help="score the runs of a --save-runs file instead of training")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "prediction.md"))
    args = parser.parse_args()
    seeds = args.seeds or (1 if args.quick else 3)
    epochs = args.epochs or (10 if args.quick else 30)
    setups = [s for s in SETUPS if not args.quick or s.name in QUICK_SETUPS]
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)

    load = os.getloadavg()
    origin = package_origin()
    start = time.perf_counter()
    datasets: dict[tuple[str, bool], Data] = {}
    runs: list[Run] = []
    total = len(setups) * seeds
    if args.load_runs:
        saved = json.loads(Path(args.load_runs).read_text())
        runs = [Run(**r) for r in saved["runs"]]
        meta = saved["meta"]
        setups = [s for s in SETUPS if any(r.setup == s.name for r in runs)]
        seeds, epochs = len({r.seed for r in runs}), max(int(r.history[-1]["epoch"]) + 1 for r in runs)
    for setup in setups if not runs else ():
        key = (setup.dataset, setup.image)
        if key not in datasets:
            datasets[key] = Data(*key)
        for seed in range(seeds):
            run = fit(setup, datasets[key], seed, epochs, args.probe_size, args.pool_size)
            runs.append(run)
            final = run.history[-1] if run.history else {}
            pools = " ".join(f"{p} {final.get(f'{PREFIX}/pool/{p}/test_error', math.nan):.3f}" for p in SHIFTS)
            print(
                f"[{len(runs):2d}/{total}] {setup.name:<14} seed {seed}: {run.seconds:6.1f} s, "
                f"test error {final.get(f'{PREFIX}/test_error', math.nan):.3f} (train "
                f"{final.get(f'{PREFIX}/train_error', math.nan):.3f}); shifted: {pools}",
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
            "pool_size": args.pool_size,
            "budget": "`budget=None`",
        }
    if args.save_runs:
        Path(args.save_runs).write_text(json.dumps({"runs": [asdict(r) for r in runs], "meta": meta}))
    wall = meta["wall"]

    needs: dict[str, bool] = {}
    for run in runs:
        for name, flag in run.needs_labels.items():
            needs[name.rpartition("/")[2]] = flag
    main_names = estimators(runs)
    shift_names = sorted({e for p in SHIFTS for e in estimators(runs, f"pool/{p}/")})

    indist = [(run.setup, in_distribution(run, main_names)) for run in runs]
    shifted = [(run.setup, under_shift(run, shift_names)) for run in runs]
    shift_mean = [
        (
            setup,
            {
                e: {kind: _finite_mean([pools[p][e][kind] for p in SHIFTS]) for kind in ("loss", "error")}
                for e in shift_names
            },
        )
        for setup, pools in shifted
    ]
    table_in = aggregate(indist, main_names, needs)
    table_shift = aggregate(shift_mean, shift_names, needs)

    # per-setup skill (loss, seed-averaged MAE) and per-shift skill (loss, MAE over setups × seeds)
    setup_names = [s.name for s in setups]

    def setup_skill(kind: str) -> Callable[[str, str], float]:
        def cell(e: str, setup: str) -> float:
            own = [m[e][kind] for s, m in indist if s == setup]
            return _paired_skill(own, [m[TRIVIAL][kind] for s, m in indist if s == setup])

        return cell

    def shift_skill(kind: str) -> Callable[[str, str], float]:
        def cell(e: str, pool: str) -> float:
            own = [pools[pool][e][kind] for _, pools in shifted]
            return _paired_skill(own, [pools[pool][TRIVIAL][kind] for _, pools in shifted])

        return cell

    def severity(pool: str, key: str) -> float:
        values = [
            r.history[-1].get(f"{PREFIX}/pool/{pool}/{key}", math.nan) - r.history[-1].get(f"{PREFIX}/{key}", math.nan)
            for r in runs
        ]
        return _finite_mean(values)

    trivial_shift = {p: _finite_mean([pools[p][TRIVIAL]["loss"] for _, pools in shifted]) for p in SHIFTS}
    severity_lines = [
        "| shift | mean test error − validation's | mean test loss − validation's | MAE of trivial (loss) |",
        "|---|---|---|---|",
    ] + [
        f"| {p} | {severity(p, 'test_error'):+.3f} | {severity(p, 'test_loss'):+.3f} | {trivial_shift[p]:.3f} |"
        for p in SHIFTS
    ]
    final_errors = defaultdict(list)
    for run in runs:
        final_errors[run.setup].append(
            (run.history[-1].get(f"{PREFIX}/train_error", math.nan), run.history[-1].get(f"{PREFIX}/test_error"))
        )
    setup_lines = ["| setup | configuration | final train error | final test error |", "|---|---|---|---|"] + [
        f"| {s.name} | {s.description} | {_fmt(_finite_mean([a for a, _ in final_errors[s.name]]), '.3f')} | "
        f"{_fmt(_finite_mean([b for _, b in final_errors[s.name]]), '.3f')} |"
        for s in setups
    ]
    seconds = defaultdict(list)
    for run in runs:
        for row in run.history:
            for key, value in row.items():
                if key.endswith("/seconds"):
                    seconds[key.split("/")[1]].append(value)
    ranked = sorted(((statistics.fmean(v), name) for name, v in seconds.items()), reverse=True)
    costs = ", ".join(f"{name} {mean:.2f} s" for mean, name in ranked) or "not logged"
    missing, outside = defaultdict(int), defaultdict(int)
    for run in runs:
        for name, count in gaps(run, main_names).items():
            missing[name] += count
        for name, count in out_of_range(run, main_names).items():
            outside[name] += count
    oddities = [
        f"`{e}` has no finite prediction in {n} measured epochs (after the first)" for e, n in missing.items() if n
    ]
    oddities += [f"`{e}` predicted a test error outside [0, 1] {n} times" for e, n in outside.items() if n]
    messages = sorted({m.splitlines()[0][:300] for run in runs for m in run.warnings})

    text = "\n\n".join(
        [
            "# What the predictions are worth",
            f"`{meta['command']}`: {len(setups)} setups × {seeds} seed(s), {epochs} epochs, every measure every "
            f"epoch ({meta['budget']}), probe of {meta['probe_size']} training samples, pools of "
            f"{meta['pool_size'] or 'all'} test samples, torch {torch.__version__} with {meta['threads']} thread(s) "
            f"on {os.cpu_count()} CPU cores ({platform.machine()}). Total wall time **{wall:.0f} s** "
            f"({wall / 60:.1f} min); load average {meta['load'][0]:.1f} at the start, "
            f"{meta['load'][1]:.1f} at the end (the cores were shared). Package: {meta['origin']}.",
            "Skill = 1 − MAE/MAE(trivial), higher is better, 0 = as good as trivial, negative = worse. Mean skill is "
            "the mean of per-run skills (setups × seeds), which a few blow-ups can drag far down, so the median is "
            f"shown too; wins = setups in which the skill of the seed-averaged MAE is ≥ {WIN}, out of the setups in "
            "which the estimator predicted; runs = runs with a prediction.",
            "## In distribution (validation = test split), MAE over the last third of the measured epochs",
            "Trivial predicts test loss/error = the training probe's.",
            markdown(table_in, SUMMARY_COLUMNS),
            "Skill (loss) per setup, seed-averaged MAE:",
            by_column([r["estimator"] for r in table_in], setup_names, setup_skill("loss")),
            "Skill (error) per setup, seed-averaged MAE:",
            by_column([r["estimator"] for r in table_in], setup_names, setup_skill("error")),
            "## Under shift, at the end of training (five pools from the test split, labels only score)",
            "Trivial predicts each shifted pool's test loss/error = the validation data's; |predicted − actual| is "
            "averaged over the five pools of a run. Label-needing and weight-only estimators make no pool "
            "prediction.",
            markdown(table_shift, SUMMARY_COLUMNS),
            "Skill (loss) per shift, MAE over setups × seeds:",
            by_column([r["estimator"] for r in table_shift], list(SHIFTS), shift_skill("loss")),
            "Skill (error) per shift, MAE over setups × seeds:",
            by_column([r["estimator"] for r in table_shift], list(SHIFTS), shift_skill("error")),
            "How strong the shifts are (means over runs at the end of training):",
            "\n".join(severity_lines),
            "## Configuration",
            "\n".join(setup_lines),
            "Shifts, applied to the z-scored inputs the network sees (a raw-pixel corruption of digits' "
            "near-constant border pixels is blown up 10–100× by the z-scoring): noise = gaussian, σ = 0.75; blur = "
            "3×3 binomial kernel (digits) / 5-tap triangle (MNIST-1D), edges repeated; translate = roll by ±1 pixel "
            "along a random axis (digits) / shift by ±2–5 samples, edge repeated (MNIST-1D); contrast = each sample "
            "pulled to 40% around its own mean; occlude = a random 4×4 patch (digits) / 10-sample window (MNIST-1D) "
            "set to 0, the training mean. The data split is fixed; the seed sets initialisation, batch order, the "
            "label noise or training subset, the probe draw, the measures' noise and the corruptions.",
            "Measuring time per epoch (mean over runs, `gensens/<measure>/seconds`): " + costs + ".",
            "Per-run wall time: "
            + ", ".join(f"{s} {statistics.fmean([r.seconds for r in runs if r.setup == s]):.0f} s" for s in setup_names)
            + ".",
            "Gaps and out-of-range predictions over all runs (a NaN/Inf prediction is not logged; ATC predicts "
            "nothing while the probe's error is 0; the ratio rule applied to the error is not clipped to [0, 1]):"
            "\n\n" + ("\n".join(f"- {line}" for line in oddities) if oddities else "- none"),
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
