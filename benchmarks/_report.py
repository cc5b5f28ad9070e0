"""The prediction benchmark's Markdown report: its tables (the estimators' skill under shift, per family, level and
shift, and in distribution; how strong the shifts are), the configuration, and the whole text."""

from __future__ import annotations

import math
import os
import platform
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from _scoring import (
    KINDS,
    PREFIX,
    TRIVIAL,
    WIN,
    Item,
    Run,
    actual_key,
    aggregate,
    estimators,
    finite_mean,
    in_distribution,
    out_of_range,
    paired_skill,
    reference_key,
    score,
    shift_items,
)
from _shifts import FAMILIES, HELD_OUT, LEVELS, NATURAL, UNSEEN

OT = "optimal_transport"
SHIFTED = tuple(FAMILIES)
COVARIATE = "natural + corruption"


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


def training_table(runs: Sequence[Run], names: Sequence[str], quantity: str) -> str:
    """Skill (wins) over every shifted pool at every fourth measured epoch and the last, for the estimators that
    predicted at each of them."""
    last = max(int(r["epoch"]) for run in runs for r in run.history)
    epochs = sorted({*range(0, last + 1, 4), last})
    scores = {
        epoch: {
            e: score([i for i in shift_items(runs, [e], epoch) if i.family in SHIFTED and i.quantity == quantity])
            for e in names
        }
        for epoch in epochs
    }
    kept = [e for e in names if all(scores[epoch][e]["n"] for epoch in epochs)]
    kept.sort(key=lambda e: -statistics.fmean(scores[epoch][e]["skill"] for epoch in epochs))

    def cell(e: str, column: str) -> str:
        found = scores[int(column.split()[-1])][e]
        return f"{_fmt(found['skill'], '+.2f')} ({found['wins']})"

    return by_column(kept, [f"epoch {epoch}" for epoch in epochs], cell)


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
                    final.get(actual_key(pool, q), math.nan) - final.get(reference_key(reference, q), math.nan)
                    for q in KINDS
                )
            )
    levels = sorted({lv for _, lv in deltas})
    lines = ["| family | shift | " + " | ".join(f"level {lv}" for lv in levels) + " |"]
    lines.append("|" + "---|" * (len(levels) + 2))
    for kind, family in families.items():
        cells = []
        for lv in levels:
            pairs = deltas.get((kind, lv), [])
            error, loss = (finite_mean(p[j] for p in pairs) for j in range(2))
            cells.append(f"{_fmt(error, '+.3f')} / {_fmt(loss, '+.2f')}" if pairs else "")
        lines.append(f"| {family} | {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def in_distribution_section(runs: Sequence[Run], setup_names: Sequence[str]) -> list[str]:
    """The in-distribution section: the summary per estimator, then the skill per setup of the error and the loss."""
    needs: dict[str, bool] = {}
    for run in runs:
        for name, flag in run.needs_labels.items():
            needs[name.rpartition("/")[2]] = flag
    main_names = estimators(runs, main=True)
    indist = [(run.setup, in_distribution(run, main_names)) for run in runs]
    table_in = aggregate(indist, main_names, needs)

    def setup_skill(kind: str) -> Callable[[str, str], str]:
        def cell(e: str, setup: str) -> str:
            own = [m[e][kind] for s, m in indist if s == setup]
            return _fmt(paired_skill(own, [m[TRIVIAL][kind] for s, m in indist if s == setup]), "+.2f")

        return cell

    return [
        "## In distribution (validation = test split), MAE over the last third of the measured epochs",
        "Trivial predicts test loss/error = the training probe's. Mean/median of per-run skills (setups × seeds); "
        f"wins = setups in which the skill of the seed-averaged MAE is ≥ {WIN}.",
        markdown(table_in, IN_DISTRIBUTION_COLUMNS),
        "Skill (error) per setup, seed-averaged MAE:",
        by_column([r["estimator"] for r in table_in], setup_names, setup_skill("error")),
        "Skill (loss) per setup, seed-averaged MAE:",
        by_column([r["estimator"] for r in table_in], setup_names, setup_skill("loss")),
    ]


def configuration_section(runs: Sequence[Run], descriptions: dict[str, str]) -> list[str]:
    """The configuration section: the setups ({name: description}) with their final errors, the pools, the measures'
    time, the runs' wall time and the warnings they raised."""
    final_errors = defaultdict(list)
    for run in runs:
        final = run.history[-1]
        final_errors[run.setup].append(
            (final.get(f"{PREFIX}/train_error", math.nan), final.get(actual_key("", "error"), math.nan))
        )
    setup_lines = ["| setup | configuration | final train error | final test error |", "|---|---|---|---|"] + [
        f"| {name} | {description} | {_fmt(finite_mean(a for a, _ in final_errors[name]), '.3f')} | "
        f"{_fmt(finite_mean(b for _, b in final_errors[name]), '.3f')} |"
        for name, description in descriptions.items()
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
    messages = sorted({m.splitlines()[0][:300] for run in runs for m in run.warnings})
    return [
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
        + ". Unseen (designed after the covariate estimate took the nearest-neighbour distance and the rescaled "
        "logits, one severity each): MNIST-1D with "
        + ", ".join(f"`{k}` {v}" for k, v in UNSEEN["mnist1d"].items())
        + " (generator seed 3000 + seed; `+dominant`: one random class at 50%); digits "
        + ", ".join(f"`{k}` {v}" for k, v in UNSEEN["digits"].items())
        + ". The data split is fixed; the seed sets initialisation, batch order, the probe draw and the pools.",
        "Measuring time per epoch (mean over runs, `gensens/<measure>/seconds`): " + costs + ". " + ot_seconds,
        "Per-run wall time: "
        + ", ".join(f"{s} {statistics.fmean([r.seconds for r in runs if r.setup == s]):.0f} s" for s in descriptions)
        + ".",
        "Warnings raised during the runs (first line, deduplicated):\n\n"
        + ("\n".join(f"- {m}" for m in messages) if messages else "- none"),
    ]


def report(runs: Sequence[Run], meta: dict[str, Any], descriptions: dict[str, str], seeds: int, epochs: int) -> str:
    """The whole report of ``runs`` on the setups of ``descriptions`` ({name: description}), with the run
    configuration and wall time in ``meta`` (written by ``prediction.py`` and kept with the saved runs)."""
    wall = meta["wall"]
    reference = meta.get("reference", "")  # "" (validation data) or "train" (the probe, no validation loop)
    against = "the training probe's (no validation loop)" if reference else "the validation data's"
    outside_lines = ["| estimator | in distribution | in pools |", "|---|---|---|"] + [
        f"| `{e}` | {main} | {pool} |" for e, (main, pool) in sorted(out_of_range(runs).items())
    ]
    return "\n\n".join(
        [
            "# Which label-free estimator to trust, under shift and in distribution",
            f"`{meta['command']}`: {len(descriptions)} setups × {seeds} seed(s), {epochs} epochs, measures "
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
            *shift_report(runs, estimators(runs, main=False)),
            "### During training",
            "Skill (wins) over every shifted pool at every fourth epoch and the last, for the estimators that "
            "predicted at each of them (the recommended keys are read at every measured run):",
            *(
                f"{quantity.capitalize()}:\n\n" + training_table(runs, estimators(runs, main=False), quantity)
                for quantity in KINDS
            ),
            f"How strong the shifts are: mean over runs of the pool's test error / loss minus {against} at the end "
            "of training:",
            severity_table(runs, reference),
            "Predicted test errors outside [0, 1], every logged value (every epoch) of the runs:",
            "\n".join(outside_lines),
            *(in_distribution_section(runs, list(descriptions)) if not reference else []),
            *configuration_section(runs, descriptions),
        ]
    )
