"""``leanstack demo`` section for ChipExpert: build the knowledge base if it is missing, then
answer two questions the default way (for SmolLM2: extractive, quoting the passages with
numbered citations) and the first again in the model's own words (generative, post-checked)."""

from __future__ import annotations

import pathlib

DEMO_QUESTIONS = ["Which yosys pass deletes wires and cells that nothing uses any more?",
                  "How do I measure the rise time of a signal in an ngspice transient run?"]
MAX_NEW_TOKENS = 64


def ensure_knowledge_base(kb_dir: pathlib.Path) -> None:
    """Build the corpus and index in ``kb_dir`` unless a current index is already there."""
    from rich.progress import Progress

    from leanstack.chipexpert.corpus import build_corpus
    from leanstack.chipexpert.retrieval import Retriever, build_index
    from leanstack.chipexpert.sources import default_sources
    from leanstack.errors import LeanstackError

    try:
        Retriever.load(kb_dir)
        print(f"knowledge base: {kb_dir} (already built)")
        return
    except LeanstackError:
        pass
    print(f"knowledge base: building it in {kb_dir} (a few minutes, once)")
    sources = default_sources()
    with Progress(transient=True) as bar:
        task = bar.add_task("reading sources", total=len(sources))
        report = build_corpus(kb_dir, sources, on_source=lambda _: bar.advance(task))
        emb = bar.add_task("embedding chunks", total=None)
        build_index(kb_dir, on_progress=lambda d, t: bar.update(emb, completed=d, total=t))
    print(f"  {report.chunks} chunks ({report.duplicates} near-duplicates dropped)")


def run_demo(out_dir: pathlib.Path) -> None:
    """Answer two questions in the default mode and one generatively; answers go to
    ``out_dir/chip_answers.json``."""
    import torch
    from rich.console import Console

    from leanstack.chipexpert.assistant import Assistant, load_retriever
    from leanstack.chipexpert.generators import LocalGenerator
    from leanstack.chipexpert.store import default_dir, write_json

    torch.set_num_threads(1)  # on a shared 2-core machine more threads only wait on each other
    kb_dir = default_dir()
    ensure_knowledge_base(kb_dir)
    generator = LocalGenerator()
    assistant = Assistant(generator, load_retriever(kb_dir), k=3)  # mode auto
    print(f"model: {generator.name}; default answer mode for it: "
          f"{assistant.resolve_mode()}\n")
    records = []
    for question, mode in [(DEMO_QUESTIONS[0], None), (DEMO_QUESTIONS[1], None),
                           (DEMO_QUESTIONS[0], "generative")]:
        label = assistant.resolve_mode(mode)
        with Console().status(f"answering ({label})…"):
            answer = assistant.ask(question, max_new_tokens=MAX_NEW_TOKENS, mode=mode)
        print(f"Q ({label}): {question}")
        print("A: " + " ".join(answer.answer.split())[:600])
        for c in answer.citations:
            print(f"   [{c.n}]{'*' if c.cited else ' '} {c.source} — {c.section}")
        if answer.invalid_citations:
            print(f"   (taken out: citations {answer.invalid_citations} of passages not shown)")
        step = "extraction" if label == "extractive" else "generation, greedy"
        print(f"   ({answer.latency_s:.1f} s: retrieval {answer.retrieval_s:.2f} s, {step} "
              f"{answer.generation_s:.1f} s; * = cited)\n")
        records.append({"question": question, **answer.to_dict()})
    out = out_dir / "chip_answers.json"
    write_json(out, records)
    print(f"answers with their passages: {out}")
    print("try it yourself: leanstack chip ask \"your question\"  or  leanstack chip serve")
