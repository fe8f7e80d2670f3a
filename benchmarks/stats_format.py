"""Small helpers the local-backend benchmarks share: medians that skip gaps, table cells."""

from __future__ import annotations

import statistics


def median_or_none(xs: list[float | None]) -> float | None:
    """Median of the values that are present; None when there are none."""
    present = [x for x in xs if x is not None]
    return float(statistics.median(present)) if present else None


def cell(x: float | None, digits: int = 1) -> str:
    """A Markdown table cell: the number rounded, or an en dash when it is missing."""
    return "–" if x is None else f"{x:.{digits}f}"
