"""``leanstack chip``: build the knowledge base, search it, ask the assistant, serve it (wiring
only)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from leanstack.chipexpert.training.cli import train_app
from leanstack.errors import LeanstackError

chip_app = typer.Typer(help="ChipExpert: knowledge base, retrieval, assistant.",
                       no_args_is_help=True)
corpus_app = typer.Typer(help="Build the knowledge base from the offline documentation.",
                         no_args_is_help=True)
chip_app.add_typer(corpus_app, name="corpus")
chip_app.add_typer(train_app, name="train")

_DIR_HELP = "knowledge-base directory (default: $LEANSTACK_CHIP_DIR or the user cache dir)"
_SERVER_HELP = ("a running 'leanstack chip serve' to use (its model and index are warm): a URL, "
                "'auto' (the default: http://127.0.0.1:8000 when one answers there, else work "
                "in this process) or 'off'; default $LEANSTACK_CHIP_SERVER")


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
    no_prebuilt: bool = typer.Option(False, "--no-prebuilt", help="do not take embeddings from "
                                     "the package's prebuilt cache (embed every chunk this "
                                     "knowledge base's own cache lacks)"),
) -> None:
    """Ingest the sources, chunk and de-duplicate them, then (re)build the search index."""
    from rich.console import Console
    from rich.progress import Progress, TaskID

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

    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"reading {sources[0].name}" if sources else "", total=len(sources))

        def show(rep: SourceReport) -> None:
            if rep.status == "failed":
                console.print(f"[yellow]skipped[/yellow] {rep.name}: {rep.error}",
                              highlight=False)
            else:
                console.print(f"{rep.status:9} {rep.name}: {rep.chunks} chunks", highlight=False)
            done = int(bar.tasks[0].completed) + 1
            bar.update(task, advance=1, description="de-duplicating" if done == len(sources)
                       else f"reading {sources[done].name}")

        report = build_corpus(out_dir, sources, force=force, on_source=show)
    console.print(f"corpus: {report.chunks} chunks ({report.duplicates} near-duplicates dropped)"
                  f" in {out_dir}", highlight=False)
    if no_index:
        return
    with Progress(console=console) as bar:
        tasks: dict[str, TaskID] = {}

        def embedding(source: str, done: int, total: int) -> None:
            if source not in tasks:
                tasks[source] = bar.add_task(f"embedding {source}", total=total)
            bar.update(tasks[source], completed=done)

        embedded = build_index(out_dir, on_source=embedding, prebuilt=not no_prebuilt,
                               on_note=lambda note: console.print(note, highlight=False))
    console.print(f"index: {embedded} chunks embedded, the rest found in the embedding caches",
                  highlight=False)


@chip_app.command("tune-retriever")
def tune_retriever_command(
    directory: Path | None = typer.Option(None, "--dir", help=_DIR_HELP),
) -> None:
    """Fine-tune the question encoder and train the re-ranker on the tuning half of the
    chunk-level question set; search then uses them."""
    from rich.progress import Progress

    from leanstack.chipexpert.store import default_dir
    from leanstack.chipexpert.tune import tune_retriever

    with Progress(transient=True) as bar:
        task = bar.add_task("fine-tuning the query encoder", total=None)
        report = tune_retriever(directory or default_dir(), on_step=lambda stage, done, total:
                                bar.update(task, description=stage, completed=done,
                                           total=total))
    print(f"query encoder {report['embedder']['name']} trained in "
          f"{report['train_embedder_s']:.0f} s on {sum(report['embedder']['pairs'].values())} "
          f"pairs; re-ranker trained in {report['train_reranker_s']:.1f} s")


@chip_app.command("search")
def search(
    query: str = typer.Argument(..., help="a question or keywords"),
    k: int = typer.Option(3, "--k", help="how many chunks to return"),
    method: str = typer.Option("auto", "--method", help="auto (reranked where 'chip "
                               "tune-retriever' trained a re-ranker, else fused), reranked, "
                               "fused, rrf, dense or bm25"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON list of "
                                 "{source, section, text, score}"),
    directory: Path | None = typer.Option(None, "--dir", help=_DIR_HELP),
    server: str | None = typer.Option(None, "--server", help=_SERVER_HELP),
) -> None:
    """Search the knowledge base and print the best chunks."""
    import sys

    from leanstack.chipexpert.client import find_server, remote_search, server_setting

    setting = server_setting(server)
    if setting.lower() not in ("auto", "off", "none", "no") and (directory or method != "auto"):
        raise LeanstackError("a server searches its own knowledge base by the auto method; "
                             "drop --dir/--method or pass --server off")
    url = find_server(setting) if directory is None and method == "auto" else None
    if url:
        hits = remote_search(url, query, k)
        print(f"(searched by the ChipExpert server at {url})", file=sys.stderr)
    else:
        from leanstack.chipexpert.retrieval import Retriever, query_encoder
        from leanstack.chipexpert.store import default_dir

        kb = directory or default_dir()
        hits = [h.to_json() for h in Retriever.load(kb).search(query, k=k, method=method)]
        if method != "bm25":
            print(f"({query_encoder(kb)[2]})", file=sys.stderr)
    if as_json:
        print(json.dumps([{key: h[key] for key in ("source", "section", "text", "score")}
                          for h in hits], indent=1, ensure_ascii=False))
        return
    for n, h in enumerate(hits, 1):
        print(f"[{n}] {h['source']} — {h['section']}  (score {h['score']:.4f})")
        text = h["text"]
        print("    " + text[:400].replace("\n", "\n    ") + ("…" if len(text) > 400 else ""))


_MODEL_HELP = ("local model: a Hugging Face directory or .gguf file (default: the bundled "
               "SmolLM2-135M-Instruct); with --endpoint, the model name on that server")
_ENDPOINT_HELP = "an OpenAI-compatible server, e.g. http://localhost:8000/v1"
_MODE_HELP = ("extractive (quote the best sentences of the passages), generative (the model "
              "answers from them) or auto (extractive for a small local model, else generative)")


@chip_app.command("ask")
def ask(
    question: str = typer.Argument(..., help="the question"),
    k: int = typer.Option(3, "--k", help="how many passages to put in the prompt"),
    model: str | None = typer.Option(None, "--model", help=_MODEL_HELP),
    endpoint: str | None = typer.Option(None, "--endpoint", help=_ENDPOINT_HELP),
    no_rag: bool = typer.Option(False, "--no-rag", help="answer without the knowledge base"),
    as_json: bool = typer.Option(False, "--json", help="print {answer, citations: [{n, source, "
                                 "section, text, score, cited}], latency_s, ...}"),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="answer length cap"),
    directory: Path | None = typer.Option(None, "--dir", help=_DIR_HELP),
    mode: str = typer.Option("auto", "--mode", help=_MODE_HELP),
    server: str | None = typer.Option(None, "--server", help=_SERVER_HELP),
) -> None:
    """Answer a question from the top-k passages of the knowledge base, with numbered citations
    (the answer is printed as it is written, except with --json)."""
    import sys

    from leanstack.chipexpert.client import (
        find_server,
        remote_ask,
        remote_ask_stream,
        server_setting,
    )

    if max_new_tokens < 1:
        raise LeanstackError(f"--max-new-tokens must be at least 1 (got {max_new_tokens})")
    setting = server_setting(server)
    local_only = bool(model or endpoint or directory)
    if setting.lower() not in ("auto", "off", "none", "no") and local_only:
        raise LeanstackError("a server answers with its own model and knowledge base; drop "
                             "--model/--endpoint/--dir or pass --server off")
    url = None if local_only else find_server(setting)

    def show(piece: str) -> None:
        print(piece, end="", flush=True)

    on_text = None if as_json else show
    if url:
        print(f"(answered by the ChipExpert server at {url})", file=sys.stderr)
        answer = remote_ask_stream(url, question, k, not no_rag, max_new_tokens, mode,
                                   on_text) if on_text else \
            remote_ask(url, question, k, not no_rag, max_new_tokens, mode)
    else:
        from leanstack.chipexpert.assistant import make_assistant
        from leanstack.chipexpert.generators import BundledGenerator

        assistant = make_assistant(model, endpoint, rag=not no_rag, k=k, directory=directory,
                                   mode=mode, lazy=True)
        if isinstance(assistant.generator, BundledGenerator) and \
                assistant.resolve_mode() == "generative":
            print("(no ChipExpert server running: loading the model in this process; "
                  "'leanstack chip serve' keeps it loaded for the next questions)",
                  file=sys.stderr)
        answer = assistant.ask(question, max_new_tokens, on_text=on_text).to_dict()
    if as_json:
        print(json.dumps(answer, indent=1, ensure_ascii=False))
        return
    print()  # the answer itself was printed as it came
    if answer["citations"]:
        print()
    for c in answer["citations"]:
        print(f"[{c['n']}]{'*' if c['cited'] else ' '} {c['source']} — {c['section']}  "
              f"(score {c['score']:.4f})")
    if answer["invalid_citations"]:
        print(f"(taken out: citations {', '.join(f'[{n}]' for n in answer['invalid_citations'])}"
              " of passages that were not shown)")
    step = "extraction" if answer["mode"] == "extractive" else "generation"
    print(f"\n({answer['mode']}, {answer['latency_s']:.2f} s: retrieval "
          f"{answer['retrieval_s']:.2f} s, {step} {answer['generation_s']:.2f} s"
          f"{'; * = cited in the answer' if answer['citations'] else ''})")


@chip_app.command("serve")
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on"),
    port: int = typer.Option(8000, "--port", help="TCP port"),
    model: str | None = typer.Option(None, "--model", help=_MODEL_HELP),
    endpoint: str | None = typer.Option(None, "--endpoint", help=_ENDPOINT_HELP),
    k: int = typer.Option(3, "--k", help="default number of passages per answer"),
    no_rag: bool = typer.Option(False, "--no-rag", help="serve without the knowledge base"),
    directory: Path | None = typer.Option(None, "--dir", help=_DIR_HELP),
    mode: str = typer.Option("auto", "--mode", help="default answer mode: " + _MODE_HELP),
) -> None:
    """Serve the assistant: a web page at / and the JSON API at /api/ask and /api/search."""
    import uvicorn

    from leanstack.chipexpert.assistant import make_assistant
    from leanstack.chipexpert.server import create_app

    if not 0 < port < 65536:
        raise LeanstackError(f"--port must be 1..65535 (got {port})")
    assistant = make_assistant(model, endpoint, rag=not no_rag, k=k, directory=directory,
                               mode=mode)
    if assistant.retriever is not None:
        assistant.retriever.model  # noqa: B018 -- load the question encoder before the first call
    app = create_app(assistant)
    print(f"ChipExpert on http://{host}:{port}/  (API: POST /api/ask, GET /api/search)",
          flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


@chip_app.command("bench")
def bench(
    model: str | None = typer.Option(None, "--model", help=_MODEL_HELP),
    endpoint: str | None = typer.Option(None, "--endpoint", help=_ENDPOINT_HELP),
    rag: bool = typer.Option(False, "--rag/--no-rag", help="put the top-k passages of the "
                             "knowledge base into each prompt"),
    domains: list[str] = typer.Option([], "--domains", help="only these domains (digital, "
                                      "analog, eda, soc, power, rf_circuits, rf_antennas, cim, "
                                      "nn_hw); repeatable or comma-separated"),
    types: list[str] = typer.Option([], "--types", help="only these item types (open, mcq, "
                                    "numeric, verilog, spice); repeatable or comma-separated"),
    limit: int | None = typer.Option(None, "--limit", help="at most N items per domain"),
    out: Path | None = typer.Option(None, "--out", help="write the results as JSON here"),
    chart: Path | None = typer.Option(None, "--chart", help="draw the per-domain bar chart (PNG)"),
    human_scores: Path | None = typer.Option(None, "--human-scores", help="CSV of id,score "
                                             "(0-1) that replaces the automatic open scores"),
    k: int = typer.Option(3, "--k", help="passages per question with --rag"),
    directory: Path | None = typer.Option(None, "--dir", help=_DIR_HELP),
    mcq_scoring: str = typer.Option("per-token", "--mcq-scoring",
                                    help="how a scoring model picks an MCQ choice: per-token "
                                    "(log-likelihood per token of the choice), pmi (minus that "
                                    "after a content-free prompt) or per-char"),
) -> None:
    """Run ChipICD-Bench: ask the model every item, score it, print per-domain/level tables."""
    from leanstack.chipexpert.bench.commands import run_bench_command

    run_bench_command(model, endpoint, rag, domains, types, limit, out, chart, human_scores, k,
                      directory, mcq_scoring)


@chip_app.command("bench-report")
def bench_report(
    files: list[Path] = typer.Argument(..., help="result files of 'chip bench --out'"),
    chart: Path | None = typer.Option(None, "--chart", help="draw the per-domain bar chart (PNG)"),
    human_scores: list[Path] = typer.Option([], "--human-scores", help="CSV of id,score for the "
                                            "open items of the n-th result file; repeatable"),
) -> None:
    """Compare result files side by side (e.g. without and with retrieval) and chart them."""
    from leanstack.chipexpert.bench.commands import report_command

    report_command(files, chart, human_scores)
