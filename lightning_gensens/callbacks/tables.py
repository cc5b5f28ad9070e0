"""The MAE table as text: the rank-zero log's aligned columns and TensorBoard's Markdown."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

MIN_SCORED = 3
"""Scored runs below which a row of the MAE table is flagged (``reliable`` False) and sorted last."""


_COLUMNS = (  # key, title, least width in the text table, format
    ("estimator", "estimator", 34, "s"),
    ("needs_labels", "labels", 7, "s"),
    ("mae_test_loss", "MAE test loss", 15, ".4g"),
    ("skill_loss", "skill loss", 12, "+.3f"),
    ("mae_test_error", "MAE test error", 16, ".4g"),
    ("skill_error", "skill error", 13, "+.3f"),
    ("epochs", "runs", 6, "d"),
    ("reliable", f"≥{MIN_SCORED} runs", 9, "s"),
)


def _cells(row: Mapping[str, Any]) -> list[str]:
    """One row of the MAE table as text: labels as yes/no, NaN as —."""
    cells = []
    for key, _, _, spec in _COLUMNS:
        value = row.get(key, math.nan)
        if key in ("needs_labels", "reliable"):
            cells.append("yes" if value else "no")
        elif isinstance(value, float) and math.isnan(value):
            cells.append("—")
        else:
            cells.append(format(value, spec))
    return cells


def format_table(table: list[dict[str, Any]]) -> str:
    """The MAE table as text, one line per estimator, each column as wide as its longest cell needs; skill =
    1 − MAE/MAE(trivial), higher is better."""
    rows = [_cells(row) for row in table]
    widths = [max([width, *(len(cells[i]) + 2 for cells in rows)]) for i, (_, _, width, _) in enumerate(_COLUMNS)]

    def line(cells: list[str]) -> str:
        # the estimator left-aligned, the numbers right-aligned
        return "".join(
            f"{text:>{width}}" if i else f"{text:<{width}}"
            for i, (text, width) in enumerate(zip(cells, widths, strict=True))
        )

    header = line([title for _, title, _, _ in _COLUMNS])
    return "\n".join([header, "-" * len(header), *map(line, rows)])


def markdown_table(table: list[dict[str, Any]]) -> str:
    """The MAE table in Markdown, as TensorBoard's text tab shows it."""
    lines = ["| " + " | ".join(title for _, title, _, _ in _COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    for row in table:
        name, *numbers = _cells(row)
        lines.append(f"| `{name}` | " + " | ".join(numbers) + " |")
    return "\n".join(lines)
