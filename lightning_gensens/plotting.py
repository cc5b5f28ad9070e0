"""Predicted-versus-actual test loss figure, drawn from logged rows."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

PRED_SUFFIX = "/pred_test_loss"
ACTUAL = "actual test loss"
TRAIN = "train loss (probe)"


def prediction_series(
    rows: Iterable[Mapping[str, float | str | None]], prefix: str = "gensens"
) -> dict[str, tuple[list[float], list[float]]]:
    """Per curve (actual test loss, probe train loss, each estimator's prediction): its epochs and values."""
    series: dict[str, tuple[list[float], list[float]]] = {}
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
            elif key.startswith(f"{prefix}/") and key.endswith(PRED_SUFFIX):
                name = key[len(prefix) + 1 : -len(PRED_SUFFIX)]
            else:
                continue
            xs, ys = series.setdefault(name, ([], []))
            xs.append(epoch)
            ys.append(number)
    return series


def plot_predictions(
    rows: Iterable[Mapping[str, float | str | None]],
    path: str,
    prefix: str = "gensens",
    title: str = "Predicted versus actual test loss",
) -> str:
    """Write a PNG with the actual test loss and every estimator's predicted test loss per epoch; return ``path``."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 5.5))  # no pyplot: the user's backend and figure registry are left alone
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = iter(colormaps["tab20"].colors)  # type: ignore[attr-defined]
    for name, (xs, ys) in prediction_series(rows, prefix).items():
        actual, train = name == ACTUAL, name == TRAIN
        ax.plot(
            xs,
            ys,
            label=name,
            color="black" if actual else "gray" if train else next(colors),
            linestyle="--" if train else "-",
            linewidth=2.5 if actual else 1.6 if train else 1.1,
            marker="o" if len(xs) < 40 and not (actual or train) else None,
            markersize=2.5,
            zorder=3 if actual else 2,
        )
    ax.set(xlabel="epoch", ylabel="loss", title=title)
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def _number(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
