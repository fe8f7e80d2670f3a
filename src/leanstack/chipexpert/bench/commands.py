"""What ``leanstack chip bench`` and ``chip bench-report`` do (the CLI only parses options)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from leanstack.chipexpert.bench.items import TYPES, Item, load_items
from leanstack.chipexpert.bench.report import (
    label,
    load_record,
    markdown_table,
    save_chart,
    type_table,
)
from leanstack.chipexpert.bench.runner import (
    BenchRunner,
    apply_human_scores,
    bench_record,
    check_mcq_scoring,
    read_human_scores,
)
from leanstack.chipexpert.store import write_json
from leanstack.errors import LeanstackError


def split_names(values: list[str]) -> list[str]:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]`` (options may repeat or hold commas)."""
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def select_items(domains: list[str], types: list[str], limit: int | None) -> list[Item]:
    """The shipped items of these domains and types, at most ``limit`` per domain."""
    bad = sorted(set(types) - set(TYPES))
    if bad:
        raise LeanstackError(f"unknown type(s) {', '.join(bad)}; choose from {', '.join(TYPES)}")
    if limit is not None and limit < 1:
        raise LeanstackError(f"--limit must be at least 1 (got {limit})")
    items = [it for it in load_items(domains=domains or None) if not types or it.type in types]
    if limit is not None:
        per: dict[str, int] = {}
        kept = []
        for it in items:
            per[it.domain] = per.get(it.domain, 0) + 1
            if per[it.domain] <= limit:
                kept.append(it)
        items = kept
    if not items:
        raise LeanstackError("no items match; loosen --domains/--types")
    return items


def run_bench_command(model: str | None, endpoint: str | None, rag: bool, domains: list[str],
                      types: list[str], limit: int | None, out: Path | None, chart: Path | None,
                      human_scores: Path | None, k: int, directory: Path | None,
                      mcq_scoring: str = "per-token") -> None:
    """Run the selected items through the assistant, print the tables, write JSON/PNG."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from leanstack.chipexpert.assistant import make_assistant
    from leanstack.chipexpert.bench.checkers import tools_missing

    items = select_items(split_names(domains), split_names(types), limit)
    check_mcq_scoring(mcq_scoring)
    missing = tools_missing()
    if missing and any(it.executable for it in items):
        raise LeanstackError(f"{', '.join(missing)} not found; install them "
                             "(scripts/system-deps.sh) or pass --types open,mcq,numeric")
    human = read_human_scores(human_scores) if human_scores else None
    assistant = make_assistant(model, endpoint, rag=rag, k=k, directory=directory)
    runner = BenchRunner(assistant, mcq_scoring=mcq_scoring)
    console = Console(stderr=True)
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("ChipICD-Bench", total=len(items))
        results = runner.run(items, on_result=lambda r: bar.update(
            task, advance=1, description=f"{r.id} {r.score:.2f}"))
    record = bench_record(results, assistant.generator.name, rag,
                          {"k": k if rag else 0, "mcq_by_loglik": runner.loglik,
                           "mcq_scoring": mcq_scoring,
                           "domains": sorted({it.domain for it in items}), "limit": limit})
    if human:
        record = apply_human_scores(record, human)
    finish([record], out, chart)


def report_command(files: list[Path], chart: Path | None, human_scores: list[Path]) -> None:
    """Print the tables of result files side by side (and draw the chart)."""
    if not files:
        raise LeanstackError("pass at least one result file written by 'leanstack chip bench'")
    if len(human_scores) > len(files):
        raise LeanstackError("more --human-scores files than result files; give one per result, "
                             "in the same order")
    records = [load_record(f) for f in files]
    for n, csv_path in enumerate(human_scores):
        records[n] = apply_human_scores(records[n], read_human_scores(csv_path))
    finish(records, None, chart)


def finish(records: list[dict[str, Any]], out: Path | None, chart: Path | None) -> None:
    """Print the tables; write the JSON of a single run and the chart when asked."""
    print(markdown_table(records))
    print()
    print(type_table(records))
    for rec in records:
        s = rec["summary"]
        levels = ", ".join(f"{lv} {v['mean']:.3f}" for lv, v in s.get("by_level", {}).items())
        print(f"\n{label(rec)}: overall {s['overall']['mean']:.3f} over {s['overall']['n']} items"
              + (f" ({levels})" if levels else ""))
    if out:
        write_json(out, records[0])
        print(f"results: {out}")
    if chart:
        save_chart(records, chart)
        print(f"chart: {chart}")

