"""Small helpers the benchmarks share: medians that skip gaps, table cells, and the Markdown
table of LeanKV suite reports."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence


def median_or_none(xs: list[float | None]) -> float | None:
    """Median of the values that are present; None when there are none."""
    present = [x for x in xs if x is not None]
    return float(statistics.median(present)) if present else None


def cell(x: float | None, digits: int = 1) -> str:
    """A Markdown table cell: the number rounded, or an en dash when it is missing."""
    return "–" if x is None else f"{x:.{digits}f}"


def print_suite_table(labels: Sequence[str], rows: Iterable[tuple[Sequence[str], dict]]) -> None:
    """Print a Markdown table of LeanKV suite reports (``evaluate_split``'s ``mean`` and
    ``worst``), one row per ``(label cells, report)``: the labels under ``labels``, then
    compression, perplexity increase mean (worst document), KL, top-1 agreement and retrieval
    (dense retrieval in brackets)."""
    print("| " + " | ".join([*labels, "compression", "ppl +% mean (worst)", "KL", "top-1",
                             "retrieval (dense)"]) + " |")
    print("|" + "---|" * (len(labels) + 5))
    for cells, report in rows:
        m, w = report["mean"], report["worst"]
        print("| " + " | ".join([
            *cells, f"{m['compression']:.2f}x",
            f"{m['ppl_increase_pct']:+.2f} ({w['ppl_increase_pct']['value']:+.2f})",
            f"{m['kl']:.4f}", f"{m['top1_agreement']:.3f}",
            f"{m['retrieval']:.2f} ({m['retrieval_dense']:.2f})"]) + " |")
