"""Label-shift twins: can a pool's logits tell a covariate shift from a label shift, and what does that cap?

    python benchmarks/twins.py [--quick] [--seeds 2] [--epochs 25] [--permutations 200]
                               [--out benchmarks/results/twins.md]

Every label-free estimator of the package reads an unlabelled pool through the network's logits. This script trains
the four setups of `benchmarks/prediction.py` (plain fits, same seeds and epochs) and, for each of its covariate-
shifted pools (MNIST-1D regenerated with other generator parameters; corrupted digits), builds the pool's
*label-shift twin*: a draw from the validation data, as many samples, with class proportions q ≥ 0 that reproduce
the pool's predicted-class histogram through the validation confusion matrix C (C q ≈ q̂, non-negative least
squares; the black-box shift estimate of Lipton et al., ICML 2018). The twin is a pure label shift, a pool the
estimators must also handle. It then tests whether the pool's and the twin's temperature-scaled softmax vectors
(T fitted by NLL on the validation data) come from one distribution: the energy distance (Székely & Rizzo 2013)
with a permutation p-value, beside the p-value of two independent twins (the test's calibration).

Where the test cannot tell a pool from its twin (p ≥ --alpha) but their errors differ by Δ, any estimator that is
a function of the pool's logits predicts the same for both (up to what this sample size can show), so its absolute
errors on the two sum to at least Δ: a floor of Δ/2 on its mean absolute error over the pair. The report gives that
floor beside trivial's MAE (pool error = validation error) over the same pools, and the skill ceiling it implies.
`--quick` (1 seed, 6 epochs, the two MNIST-1D setups, 50 permutations) is a smoke test.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass

import lightning as L
import torch
from _common import (
    add_arguments,
    command,
    configure,
    machine,
    markdown_table,
    package_origin,
    trainer,
    write_report,
)
from prediction import SETUPS, Data, Setup
from torch import Tensor

from lightning_gensens.functional import confusion, energy_test, fit_temperature, label_shift_proportions, twin_indices
from lightning_gensens.models import Classifier, mlp

COVARIATE = ("natural", "corruption")


@dataclass
class Pair:
    setup: str
    seed: int
    family: str
    pool: str
    error: float  # the pool's actual error
    twin_error: float
    p_value: float  # pool vs twin
    calibration_p: float  # twin vs an independent twin
    validation_error: float

    @property
    def gap(self) -> float:
        return abs(self.error - self.twin_error)


def train(setup: Setup, data: Data, seed: int, epochs: int) -> torch.nn.Module:
    """The setup's network after a plain fit (no monitor; a `CSVLogger` in a temporary directory), seeded as
    `benchmarks/prediction.py` seeds its runs."""
    L.seed_everything(seed, verbose=False)
    net = mlp(data.module.num_features, data.module.num_classes, hidden=setup.hidden)
    model = Classifier(net, lr=setup.lr, weight_decay=setup.weight_decay, optimizer=setup.optimizer)
    with tempfile.TemporaryDirectory() as logs:
        trainer(epochs, [], logs).fit(model, data.module)
    return net.eval()


def _error(logits: Tensor, labels: Tensor) -> float:
    return float((logits.argmax(1) != labels).double().mean())


def pairs(setup: Setup, data: Data, seed: int, epochs: int, permutations: int) -> list[Pair]:
    net = train(setup, data, seed, epochs)
    x, y = data.module.val_set.tensors
    with torch.no_grad():
        z = net(x).double()
    k = z.shape[1]
    temperature, validation_error = fit_temperature(z, y), _error(z, y)
    validation_confusion = confusion(z.argmax(1), y, k)
    generator = torch.Generator().manual_seed(seed)

    def probs(logits: Tensor) -> Tensor:
        return torch.softmax(logits / temperature, dim=1)

    out = []
    for pool in data.pools(seed, None):
        if pool.family not in COVARIATE:
            continue
        with torch.no_grad():
            zp = net(pool.x).double()
        q = label_shift_proportions(validation_confusion, torch.bincount(zp.argmax(1), minlength=k).double() / len(zp))
        first, second = (twin_indices(y, q, len(zp), generator) for _ in range(2))
        out.append(
            Pair(
                setup.name,
                seed,
                pool.family,
                pool.name,
                _error(zp, pool.y),
                _error(z[first], y[first]),
                float(energy_test(probs(zp), probs(z[first]), permutations, generator)),
                float(energy_test(probs(z[second]), probs(z[first]), permutations, generator)),
                validation_error,
            )
        )
    return out


def summary(group: list[Pair], alpha: float) -> list[str]:
    """Counts, the gaps of the alike pairs, and over the pools with their twins: the least MAE any function of the
    logits can have (the alike pairs' gaps, each shared by two predictions), trivial's MAE and the skill ceiling."""
    same = [p for p in group if p.p_value >= alpha]
    floor = sum(p.gap for p in same) / (2 * len(group))
    trivial = statistics.mean(abs(e - p.validation_error) for p in group for e in (p.error, p.twin_error))
    return [
        str(len(group)),
        f"{sum(p.calibration_p >= alpha for p in group)}/{len(group)}",
        f"{len(same)}/{len(group)}",
        f"{statistics.mean(p.gap for p in same):.3f}" if same else "—",
        f"{max(p.gap for p in same):.3f}" if same else "—",
        f"{floor:.3f}",
        f"{trivial:.3f}",
        f"{1 - floor / trivial:+.2f}" if trivial > 0 else "—",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 seed, 6 epochs, MNIST-1D, 50 permutations")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per setup (default 2; 1 with --quick)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per fit (default 25; 6 with --quick)")
    parser.add_argument("--permutations", type=int, default=None, help="per test (default 200; 50 with --quick)")
    parser.add_argument("--alpha", type=float, default=0.05, help="p-value at or above which a pair counts as alike")
    add_arguments(parser, out="twins.md")
    args = parser.parse_args()
    configure(args)
    seeds, epochs = args.seeds or (1 if args.quick else 2), args.epochs or (6 if args.quick else 25)
    permutations = args.permutations or (50 if args.quick else 200)
    setups = [s for s in SETUPS if not args.quick or s.dataset == "mnist1d"]
    start, datasets, found = time.perf_counter(), {}, []
    for setup in setups:
        data = datasets.setdefault(setup.dataset, Data(setup.dataset))
        for seed in range(seeds):
            found += pairs(setup, data, seed, epochs, permutations)
            print(f"{setup.name} seed {seed}: {len(found)} pairs", flush=True)
    header = [
        "setup",
        "family",
        "pools",
        "twin vs twin alike",
        "pool vs twin alike",
        "mean error gap (alike)",
        "largest gap (alike)",
        "least MAE of any logit-only estimator",
        "trivial's MAE",
        "skill ceiling",
    ]
    rows = []
    for setup in setups:
        for family in COVARIATE:
            group = [p for p in found if p.setup == setup.name and p.family == family]
            if group:
                rows.append([setup.name, family, *summary(group, args.alpha)])
    for family in COVARIATE:
        group = [p for p in found if p.family == family]
        if group:
            rows.append(["all", family, *summary(group, args.alpha)])
    detail = [
        [p.setup, p.seed, p.pool, f"{p.validation_error:.3f}", f"{p.error:.3f}", f"{p.twin_error:.3f}",
         f"{p.p_value:.2f}", f"{p.calibration_p:.2f}"]
        for p in found
    ]  # fmt: skip
    lines = [
        "# Label-shift twins: what a pool's logits can tell",
        "",
        f"`{command()}`",
        "",
        f"{machine()}; package: {package_origin()}. {seeds} seed(s), {epochs} epochs, {permutations} permutations "
        f"per test, alike = p ≥ {args.alpha}; wall time {time.perf_counter() - start:.0f} s.",
        "",
        "*alike*: the energy-distance permutation test does not tell the two apart (*twin vs twin*: how often it "
        "says so of two twins, about 1 − alpha when it is calibrated). The last three columns are over the pools "
        "and their twins together, a benchmark of covariate and label shift: *least MAE*: the alike pairs' error "
        "gaps over twice the pools, since a function of the logits predicts alike for a pool and its twin and so "
        "misses the two by their gap at least; *trivial's MAE*: pool error = validation error; *skill ceiling*: "
        "1 − least MAE / trivial's MAE, the most any logit-only estimator can reach there.",
        "",
        *markdown_table(header, rows),
        "",
        "## Every pool",
        "",
        *markdown_table(
            [
                "setup",
                "seed",
                "pool",
                "validation error",
                "pool error",
                "twin error",
                "p (pool, twin)",
                "p (twin, twin)",
            ],
            detail,
        ),
    ]
    write_report("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
