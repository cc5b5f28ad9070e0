"""Predicted-versus-actual test loss figure, drawn from logged rows (and, when given, the MAE table's skills)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

PRED_SUFFIX = "/pred_test_loss"
ACTUAL = "actual test loss"
TRAIN = "train loss (probe)"
TRIVIAL = "trivial"
"""The baseline estimator (test loss ≈ the probe's), which every skill is measured against."""
MAX_BEST = 4
"""Estimators drawn beside the actual test loss and trivial when the MAE table is known."""
SKILL_FLOOR = -1.0
"""Left end of the skill axis: a bar below it (MAE over twice trivial's) is cut there, its value written."""

Series = dict[str, tuple[list[float], list[float]]]
Rows = Iterable[Mapping[str, float | str | None]]


def prediction_series(rows: Rows, prefix: str = "gensens") -> Series:
    """Per curve (actual test loss, probe train loss, each estimator's prediction): its epochs and values."""
    series: Series = {}
    for row in rows:
        epoch = _number(row.get("epoch"))
        if epoch is None:
            continue
        for key, value in row.items():
            number = _number(value)
            if number is None:
                continue
            if key == f"{prefix}/test_loss":
                name = ACTUAL
            elif key == f"{prefix}/train_loss":
                name = TRAIN
            elif (
                key.startswith(f"{prefix}/")
                and key.endswith(PRED_SUFFIX)
                and "/" not in key[len(prefix) + 1 :][: -len(PRED_SUFFIX)]
            ):
                name = key[len(prefix) + 1 : -len(PRED_SUFFIX)]  # validation predictions only, not a pool's
            else:
                continue
            xs, ys = series.setdefault(name, ([], []))
            xs.append(epoch)
            ys.append(number)
    return series


def ranked_estimators(table: Sequence[Mapping[str, Any]]) -> list[str]:
    """The estimators of an MAE table other than trivial, best first: by ``skill_loss`` (highest first), then those
    without a skill by ``mae_test_loss`` (lowest first); rows with neither are left out."""
    scored = []
    for row in table:
        name, skill, mae = str(row.get("estimator")), _number(row.get("skill_loss")), _number(row.get("mae_test_loss"))
        if name != TRIVIAL and "/" not in name and (skill is not None or mae is not None):
            scored.append((skill is None, -(skill or 0.0), math.inf if mae is None else mae, name))
    return [name for *_, name in sorted(scored, key=lambda s: s[:3])]


def shown_series(rows: Rows, prefix: str = "gensens", table: Sequence[Mapping[str, Any]] | None = None) -> Series:
    """The curves worth drawing: without ``table`` all of them; with it the actual test loss, trivial's prediction
    (the probe's train loss where trivial was not logged) and the :data:`MAX_BEST` best estimators by skill."""
    series = prediction_series(rows, prefix)
    if table is None:
        return series
    shown = {name: series[name] for name in (ACTUAL, TRIVIAL) if name in series}
    if TRIVIAL not in series and TRAIN in series:
        shown[TRAIN] = series[TRAIN]
    best = [name for name in ranked_estimators(table) if name in series][:MAX_BEST]
    shown.update({name: series[name] for name in best})
    return shown


def plot_predictions(
    rows: Rows,
    path: str,
    prefix: str = "gensens",
    title: str = "Predicted versus actual test loss",
    table: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """Write a PNG of the actual and predicted test loss per epoch; return ``path``.

    With ``table`` (the MAE table: rows with ``estimator``, ``skill_loss``, ``mae_test_loss``, ``needs_labels``) the
    top panel shows only the actual test loss, trivial and the best few estimators, and a second panel the skill
    1 − MAE/MAE(trivial) of every estimator; without it, every estimator's prediction in one panel.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    series = shown_series(rows, prefix, table)
    skills = _skills(table or ())
    colors = _colors(series)
    # no pyplot: the user's backend and figure registry are left alone
    if skills:
        fig = Figure(figsize=(10, 5.0 + 0.26 * len(skills)))
        FigureCanvasAgg(fig)
        top, bottom = fig.subplots(2, 1, height_ratios=[5.0, 1.0 + 0.26 * len(skills)])
    else:
        fig = Figure(figsize=(10, 5.5))
        FigureCanvasAgg(fig)
        top, bottom = fig.add_subplot(), None
    skill_of = {name: skill for name, skill, _ in skills}
    for name, (xs, ys) in series.items():
        actual, reference = name == ACTUAL, name in (TRIVIAL, TRAIN)
        label = f"{name} (= probe train loss)" if name == TRIVIAL else name
        if name in skill_of and not reference:
            label = f"{name} (skill {skill_of[name]:+.2f})"
        top.plot(
            xs,
            ys,
            label=label,
            color=colors[name],
            linestyle="--" if reference else "-",
            linewidth=3.0 if actual else 1.6,
            marker="o" if len(xs) < 40 and not (actual or reference) else None,
            markersize=3,
            zorder=1 if actual else 2,  # predictions on top: one that tracks the actual loss stays visible
        )
    top.set(xlabel="epoch", ylabel="loss", title=title)
    values = [y for _, ys in series.values() for y in ys if y > 0]
    if values and max(values) > 3 * min(values):  # a log axis only where the curves span a factor of 3
        top.set_yscale("log")
    top.xaxis.set_major_locator(MaxNLocator(integer=True))
    top.grid(alpha=0.3)
    if table is None:
        top.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        top.legend(fontsize=8, loc="best", framealpha=0.85)
    if bottom is not None:
        _skill_bars(bottom, skills, colors)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def _skills(table: Iterable[Mapping[str, Any]]) -> list[tuple[str, float, bool]]:
    """(estimator, skill_loss, needs_labels) of every row with a finite skill, best first."""
    rows = [
        (str(row.get("estimator")), skill, bool(row.get("needs_labels", False)))
        for row in table
        if (skill := _number(row.get("skill_loss"))) is not None
    ]
    return sorted(rows, key=lambda r: -r[1])


def _colors(series: Series) -> dict[str, Any]:
    from matplotlib import colormaps

    palette = iter(colormaps["tab10" if len(series) <= 12 else "tab20"].colors)  # type: ignore[attr-defined]
    fixed = {ACTUAL: "black", TRIVIAL: "gray", TRAIN: "gray"}
    return {name: fixed.get(name) or next(palette, "tab:blue") for name in series}


def _skill_bars(ax: Any, skills: list[tuple[str, float, bool]], colors: Mapping[str, Any]) -> None:
    """Horizontal bars of skill_loss, best at the top, a line at 0 (trivial); bars below SKILL_FLOOR are cut."""
    values = [skill for _, skill, _ in skills]
    low = max(min(0.0, *values), SKILL_FLOOR)
    high = max(0.0, *values)
    span = (high - low) or 1.0
    ys = list(range(len(skills)))[::-1]
    shown = [max(v, low) for v in values]
    bar_colors = [colors.get(name, "#bbbbbb") if name != TRIVIAL else "gray" for name, _, _ in skills]
    ax.barh(ys, shown, color=bar_colors, height=0.7)
    ax.axvline(0.0, color="black", linewidth=1)
    for y, value, cut in zip(ys, values, shown, strict=True):
        text = f"{value:+.2f}" + (" ◂" if value < cut else "")
        offset = 0.01 * span if cut >= 0 else -0.01 * span
        ax.text(cut + offset, y, text, va="center", ha="left" if cut >= 0 else "right", fontsize=7)
    ax.set_yticks(ys, [f"{name} · labels" if labels else name for name, _, labels in skills], fontsize=8)
    ax.set_xlim(low - 0.18 * span, high + 0.18 * span)
    ax.set_ylim(-0.6, len(skills) - 0.4)
    ax.set_xlabel("skill on the test loss: 1 − MAE / MAE(trivial)   (> 0 beats trivial; · labels: needs labels)")
    ax.grid(axis="x", alpha=0.3)


def _number(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
