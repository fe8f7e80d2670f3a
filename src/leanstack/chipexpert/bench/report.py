"""Tables and the bar chart of one or more benchmark results (e.g. without and with retrieval)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from leanstack.atomic import write_bytes
from leanstack.chipexpert.bench.items import DOMAINS
from leanstack.errors import LeanstackError


def load_record(path: Path) -> dict[str, Any]:
    """A result file written by ``chip bench``; anything else is a one-line error."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise LeanstackError(f"{path}: cannot read ({e.strerror}); check the path") from e
    except json.JSONDecodeError as e:
        raise LeanstackError(f"{path}: not JSON ({e.msg}); pass a file written by "
                             "'leanstack chip bench --out'") from e
    if not isinstance(record, dict) or record.get("benchmark") != "chipicd-bench":
        raise LeanstackError(f"{path}: not a ChipICD-Bench result; pass a file written by "
                             "'leanstack chip bench --out'")
    return record


def label(record: dict[str, Any]) -> str:
    """Short name of a run: model and whether retrieval was on."""
    return f"{record['model']} ({'RAG' if record['rag'] else 'no RAG'})"


def markdown_table(records: list[dict[str, Any]]) -> str:
    """Mean score per domain and level, one column per run, plus overall rows."""
    head = "| domain | level | n | " + " | ".join(label(r) for r in records) + " |"
    lines = [head, "|---|---|---|" + "---|" * len(records)]
    first = records[0]["summary"]
    for key, cell in first.get("by_domain_level", {}).items():
        domain, level = key.split("/")
        vals = [r["summary"]["by_domain_level"].get(key, {}).get("mean") for r in records]
        lines.append(f"| {DOMAINS[domain]} | {level} | {cell['n']} | "
                     + " | ".join("–" if v is None else f"{v:.3f}" for v in vals) + " |")
    for level, cell in first.get("by_level", {}).items():
        vals = [r["summary"]["by_level"].get(level, {}).get("mean") for r in records]
        lines.append(f"| **all {level}** | | {cell['n']} | "
                     + " | ".join("–" if v is None else f"**{v:.3f}**" for v in vals) + " |")
    vals = [r["summary"]["overall"]["mean"] for r in records]
    lines.append(f"| **overall** | | {first['overall']['n']} | "
                 + " | ".join(f"**{v:.3f}**" for v in vals) + " |")
    return "\n".join(lines)


def type_table(records: list[dict[str, Any]]) -> str:
    """Mean score per item type, one column per run."""
    lines = ["| type | n | " + " | ".join(label(r) for r in records) + " |",
             "|---|---|" + "---|" * len(records)]
    for kind, cell in records[0]["summary"].get("by_type", {}).items():
        vals = [r["summary"]["by_type"].get(kind, {}).get("mean") for r in records]
        lines.append(f"| {kind} | {cell['n']} | "
                     + " | ".join("–" if v is None else f"{v:.3f}" for v in vals) + " |")
    return "\n".join(lines)


def save_chart(records: list[dict[str, Any]], path: Path) -> Path:
    """Grouped bars of the mean score per domain (one bar per run), foundational domains then
    advanced ones, like the paper's figures; written atomically as PNG."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    domains = [d for d in DOMAINS if any(d in r["summary"].get("by_domain", {})
                                         for r in records)]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(domains) + 2), 4))
    width = 0.8 / len(records)
    for n, rec in enumerate(records):
        vals = [rec["summary"]["by_domain"].get(d, {}).get("mean", 0.0) for d in domains]
        xs = [i + (n - (len(records) - 1) / 2) * width for i in range(len(domains))]
        bars = ax.bar(xs, vals, width, label=label(rec))
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(range(len(domains)), [DOMAINS[d] for d in domains], rotation=30, ha="right")
    ax.set_ylabel("mean score (0-1)")
    ax.set_ylim(0, 1.05)
    ax.set_title("ChipICD-Bench (ours): score per domain")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return write_bytes(path, buf.getvalue())
