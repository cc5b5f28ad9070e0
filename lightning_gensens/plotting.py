"""Predicted-versus-actual test loss figure, drawn from logged rows (and, when given, the MAE table's skills): the
validation panel, a panel per unlabeled pool and the skill bars."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from lightning_gensens.measures.trivial import Trivial

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ACTUAL = "actual test loss"
TRAIN = "train loss (probe)"
TRIVIAL = Trivial.name
"""The baseline estimator (test loss ≈ the probe's), which every skill is measured against."""
RECOMMENDED = "recommended"
"""A pool's prediction by the recommended estimator (``<prefix>/pool/<name>/pred_test_loss``)."""
MAX_BEST = 4
"""Estimators drawn beside the actual test loss and trivial when the MAE table is known."""
SKILL_FLOOR = -1.0
"""Left end of the skill axis: a bar below it (MAE over twice trivial's) is cut there, its value written."""
POOL_COLUMNS = 2
"""Pool panels side by side."""
DPI = 80
"""Resolution of the PNG."""
PNG: dict[str, Any] = {"dpi": DPI, "pil_kwargs": {"compress_level": 1}}
"""How the figure is written: fast compression (the fit-end report counts toward the monitor's time)."""

_VALIDATION = ""
"""The group of the validation curves among the pools'."""

_VALIDATION_CURVES = {"test_loss": ACTUAL, "train_loss": TRAIN}
_POOL_CURVES = {"test_loss": ACTUAL, f"{TRIVIAL}/pred_test_loss": TRIVIAL, "pred_test_loss": RECOMMENDED}
_POOL_LABELS = {
    ACTUAL: "actual loss (labels held back)",
    TRIVIAL: f"{TRIVIAL} (= reference loss)",
    RECOMMENDED: "recommended estimator",
}

Series = dict[str, tuple[list[float], list[float]]]
Rows = Iterable[Mapping[str, float | str | None]]


def prediction_series(rows: Rows, prefix: str = "gensens") -> Series:
    """Per curve (actual test loss, probe train loss, each estimator's prediction): its epochs and values."""
    return _grouped(rows, prefix).get(_VALIDATION, {})


def pool_series(rows: Rows, prefix: str = "gensens") -> dict[str, Series]:
    """Per unlabeled pool, its curves that were logged: the actual loss (where its labels were held back), trivial's
    and the recommended estimator's prediction."""
    groups = _grouped(rows, prefix)
    groups.pop(_VALIDATION, None)
    return {
        pool: {name: curves[name] for name in _POOL_CURVES.values() if name in curves}
        for pool, curves in groups.items()
    }


def _grouped(rows: Rows, prefix: str) -> dict[str, Series]:
    """The curves of :func:`_curve`, per pool and :data:`_VALIDATION`."""
    groups: dict[str, Series] = {}
    for row in rows:
        epoch = _number(row.get("epoch"))
        if epoch is None:
            continue
        for key, value in row.items():
            number, curve = _number(value), _curve(key, prefix)
            if number is None or curve is None:
                continue
            xs, ys = groups.setdefault(curve[0], {}).setdefault(curve[1], ([], []))
            xs.append(epoch)
            ys.append(number)
    return groups


def _curve(key: str, prefix: str) -> tuple[str, str] | None:
    """(pool or :data:`_VALIDATION`, curve) that a logged key is drawn as; None for a key not drawn."""
    if not key.startswith(f"{prefix}/"):
        return None
    rest = key[len(prefix) + 1 :]
    if rest.startswith("pool/"):
        pool, _, rest = rest[len("pool/") :].partition("/")
        curve = _POOL_CURVES.get(rest)
        return (pool, curve) if curve else None
    if rest in _VALIDATION_CURVES:
        return _VALIDATION, _VALIDATION_CURVES[rest]
    estimator, _, tail = rest.partition("/")
    return (_VALIDATION, estimator) if tail == "pred_test_loss" else None


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


def predictions_figure(
    rows: Rows,
    prefix: str = "gensens",
    title: str = "Predicted versus actual test loss",
    table: Sequence[Mapping[str, Any]] | None = None,
) -> Figure:
    """The actual and predicted test loss per epoch, and a panel per unlabeled pool; needs matplotlib.

    With ``table`` (the MAE table: rows with ``estimator``, ``skill_loss``, ``mae_test_loss``, ``needs_labels``) the
    top panel shows only the actual test loss, trivial and the best few estimators, and a last panel the skill
    1 − MAE/MAE(trivial) of every estimator; without it, every estimator's prediction in the top panel. Each pool's
    panel shows its actual loss, trivial's and the recommended prediction, those that were logged.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = list(rows)  # read for the validation curves and again for the pools'
    series = shown_series(rows, prefix, table)
    pools = pool_series(rows, prefix)
    skills = _skills(table or ())
    columns = max(1, min(len(pools), POOL_COLUMNS))
    heights = [5.0] + [3.0] * math.ceil(len(pools) / columns) + ([1.0 + 0.26 * len(skills)] if skills else [])
    # no pyplot: the user's backend and figure registry are left alone, and the figure is freed with its last use
    fig = Figure(figsize=(10, 0.5 + sum(heights)))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(len(heights), columns, height_ratios=heights)
    colors = _colors(series)
    labels = {name: f"{name} (skill {skill:+.2f})" for name, skill, _ in skills if name not in (TRIVIAL, TRAIN)}
    labels[TRIVIAL] = f"{TRIVIAL} (= probe train loss)"
    if table is None:
        legend: dict[str, Any] = {"fontsize": 8, "loc": "center left", "bbox_to_anchor": (1.01, 0.5)}
    else:
        legend = {"fontsize": 8, "loc": "upper right", "framealpha": 0.85}  # "best" searches: slow
    _draw(fig.add_subplot(grid[0, :]), series, colors, labels, title, legend)
    for i, (pool, curves) in enumerate(pools.items()):
        ax = fig.add_subplot(grid[1 + i // columns, i % columns])
        _draw(ax, curves, _colors(curves), _POOL_LABELS, f"pool {pool}", {"fontsize": 7, "framealpha": 0.85})
    bars = fig.add_subplot(grid[-1, :]) if skills else None
    if bars is not None:
        _skill_bars(bars, skills, colors)
    # fixed margins (a layout pass draws the figure once more); room on the right for an outside legend
    fig.subplots_adjust(left=0.07, right=0.98 if table else 0.72, bottom=0.04, top=0.97, hspace=0.45, wspace=0.2)
    if bars is not None:  # room on the left for the estimators' names and skills
        box = bars.get_position()
        bars.set_position((0.34, box.y0, 0.98 - 0.34, box.height))
    return fig


def plot_predictions(
    rows: Rows,
    path: str,
    prefix: str = "gensens",
    title: str = "Predicted versus actual test loss",
    table: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """Write :func:`predictions_figure` as a PNG; return ``path``."""
    predictions_figure(rows, prefix, title, table).savefig(path, **PNG)
    return path


def _draw(
    ax: Any, series: Series, colors: Mapping[str, Any], labels: Mapping[str, str], title: str, legend: Mapping[str, Any]
) -> None:
    """One panel's curves over epochs: the actual loss thick and below, the references dashed; ``legend`` holds the
    legend's options."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    for name, (xs, ys) in series.items():
        actual, reference = name == ACTUAL, name in (TRIVIAL, TRAIN)
        ax.plot(
            xs,
            ys,
            label=labels.get(name, name),
            color=colors[name],
            linestyle="--" if reference else "-",
            linewidth=3.0 if actual else 1.6,
            marker="o" if len(xs) < 40 and not (actual or reference) else None,
            markersize=3,
            zorder=1 if actual else 2,  # predictions on top: one that tracks the actual loss stays visible
        )
    ax.set(xlabel="epoch", ylabel="loss", title=title)
    values = [y for _, ys in series.values() for y in ys if y > 0]
    if values and max(values) > 3 * min(values):  # a log axis only where the curves span a factor of 3
        ax.set_yscale("log")
        # plain numbers, no minor labels: mathtext labels cost a parse each, and the figure is drawn within budget
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(_minor_label))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if series:  # a panel with no curve logged (no labels anywhere) has no legend
        ax.legend(**legend)


def _minor_label(value: float, _: Any) -> str:
    """A log axis' minor tick labelled where its leading digit is 2 or 5."""
    leading = f"{value:.0e}"[0]
    return f"{value:g}" if leading in "25" else ""


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
    # each value in its bar's label (one text per bar: text is what drawing the figure costs)
    names = [
        f"{name}{' · labels' if labels else ''}  {value:+.2f}{' ◂' if value < cut else ''}"
        for (name, _, labels), value, cut in zip(skills, values, shown, strict=True)
    ]
    ax.set_yticks(ys, names, fontsize=8)
    ax.set_xlim(low - 0.18 * span, high + 0.18 * span)
    ax.set_ylim(-0.6, len(skills) - 0.4)
    ax.set_xlabel("skill on the test loss: 1 − MAE / MAE(trivial)   (> 0 beats trivial; · labels: needs labels; ◂ cut)")
    ax.grid(axis="x", alpha=0.3)


def _number(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
