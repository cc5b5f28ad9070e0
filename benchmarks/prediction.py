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
- corruption (digits): noise, blur, sub-pixel translation, contrast and occlusion of the inputs, 3 levels each;
- held out and unseen (both datasets): two families of other shifts, one severity each, designed after the covariate
  estimate's successive versions had been chosen on the families before them.

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
thread by default (`--threads`). The scoring is in `_scoring.py`, the report in `_report.py`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import torch
from _common import package_origin
from _report import OT, report
from _scoring import KINDS, PREFIX, RECOMMENDED, Run, actual_key, finite_mean, parse
from _shifts import NaturalShifts, Pool, corruptions, held_out_corruptions, label_shifts, unseen_corruptions
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from lightning_gensens import GeneralizationMonitor
from lightning_gensens.data import ArrayDataModule
from lightning_gensens.measures import MEASURES
from lightning_gensens.models import Classifier, mlp

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
        per seed), MNIST-1D regenerated (as many samples as the test split), then the two held-out families."""
        if seed not in self._pools:
            x, y = self.module.val_set.tensors
            keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:pool_size]
            x, y = x[keep], y[keep]
            pools = label_shifts(x, y, self.module.num_classes, seed)
            if self.natural is not None:
                natural = self.natural
                pools = natural.pools(seed, len(y)) + pools + natural.held_out(seed, len(y))
                pools += natural.unseen(seed, len(y))
            else:
                pools = corruptions(x, y, seed) + pools + held_out_corruptions(x, y, seed)
                pools += unseen_corruptions(x, y, seed)
            self._pools[seed] = pools
        return self._pools[seed]


# -- one run --------------------------------------------------------------------------------------------------------
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
                by_family[family].append(final.get(actual_key(pool, "error"), math.nan))
            shifted = ", ".join(f"{f} {finite_mean(v):.3f}" for f, v in by_family.items())
            print(
                f"[{len(runs):2d}/{total}] {setup.name:<13} seed {seed}: {run.seconds:6.1f} s, test error "
                f"{final.get(actual_key('', 'error'), math.nan):.3f} (train "
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
    text = report(runs, meta, {s.name: s.description for s in setups}, seeds, epochs)
    print("\n" + text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
