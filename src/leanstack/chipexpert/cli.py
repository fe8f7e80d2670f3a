"""``leanstack chip``: build the knowledge base and search it (wiring only)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from leanstack.errors import LeanstackError

chip_app = typer.Typer(help="ChipExpert: the IC-design knowledge base and its retrieval.",
                       no_args_is_help=True)
corpus_app = typer.Typer(help="Build the knowledge base from the offline documentation.",
                         no_args_is_help=True)
chip_app.add_typer(corpus_app, name="corpus")

_DIR_HELP = "knowledge-base directory (default: $LEANSTACK_CHIP_DIR or the user cache dir)"


@corpus_app.command("build")
def corpus_build(
    out: Path | None = typer.Option(None, "--out", help=_DIR_HELP),
    add: list[Path] = typer.Option([], "--add", help="an extra file to ingest (html, pdf, man "
                                   "page, text/Markdown); repeatable"),
    add_license: str = typer.Option("unknown", "--add-license", help="licence of --add files"),
    only: list[str] = typer.Option([], "--only", help="build just these default sources (by "
                                   "name, e.g. man-iverilog); repeatable"),
    force: bool = typer.Option(False, "--force", help="re-read every source, ignoring the cache"),
    no_index: bool = typer.Option(False, "--no-index", help="build the corpus only, no index"),
) -> None:
    """Ingest the sources, chunk and de-duplicate them, then (re)build the search index."""
    from rich.console import Console
    from rich.progress import Progress

    from leanstack.chipexpert.corpus import SourceReport, build_corpus
    from leanstack.chipexpert.retrieval import build_index
    from leanstack.chipexpert.sources import default_sources, file_source
    from leanstack.chipexpert.store import default_dir

    out_dir = out or default_dir()
    console = Console(stderr=True)
    sources = default_sources()
    if only:
        unknown = sorted(set(only) - {s.name for s in sources})
        if unknown:
            raise LeanstackError(f"unknown source(s) {', '.join(unknown)}; choose from "
                                 f"{', '.join(s.name for s in sources)}")
        sources = [s for s in sources if s.name in only]
    sources += [file_source(p, add_license) for p in add]

    def show(rep: SourceReport) -> None:
        if rep.status == "failed":
            console.print(f"[yellow]skipped[/yellow] {rep.name}: {rep.error}", highlight=False)
        else:
            console.print(f"{rep.status:9} {rep.name}: {rep.chunks} chunks", highlight=False)

    report = build_corpus(out_dir, sources, force=force, on_source=show)
    console.print(f"corpus: {report.chunks} chunks ({report.duplicates} near-duplicates dropped)"
                  f" in {out_dir}", highlight=False)
    if no_index:
        return
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("embedding chunks", total=None)
        embedded = build_index(out_dir, on_progress=lambda d, t: bar.update(task, completed=d,
                                                                            total=t))
    console.print(f"index: {embedded} chunks embedded, the rest reused", highlight=False)


@chip_app.command("search")
def search(
    query: str = typer.Argument(..., help="a question or keywords"),
    k: int = typer.Option(3, "--k", help="how many chunks to return"),
    method: str = typer.Option("fused", "--method", help="fused, dense or bm25"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON list of "
                                 "{source, section, text, score}"),
    directory: Path | None = typer.Option(None, "--dir", help=_DIR_HELP),
) -> None:
    """Search the knowledge base and print the best chunks."""
    from leanstack.chipexpert.retrieval import Retriever
    from leanstack.chipexpert.store import default_dir

    hits = Retriever.load(directory or default_dir()).search(query, k=k, method=method)
    if as_json:
        print(json.dumps([{key: h.to_json()[key] for key in ("source", "section", "text", "score")}
                          for h in hits], indent=1, ensure_ascii=False))
        return
    for n, h in enumerate(hits, 1):
        print(f"[{n}] {h.source} — {h.section}  (score {h.score:.4f})")
        print("    " + h.text[:400].replace("\n", "\n    ") + ("…" if len(h.text) > 400 else ""))
