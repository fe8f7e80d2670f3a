"""``leanstack chip tune-retriever``: fine-tune the query side of the embedder, then train the
re-ranker, both on the tuning half of the chunk-level question set (see ``finetune.py`` and
``rerank.py``); the chunk embeddings in the index stay as they are."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from leanstack.chipexpert.chunk_eval import load_questions
from leanstack.chipexpert.finetune import TuneSettings, train_embedder
from leanstack.chipexpert.rerank import reranker_dir, train_reranker


def tune_retriever(corpus_dir: Path, settings: TuneSettings | None = None,
                   on_step: Callable[[str, int, int], None] | None = None) -> dict:
    """Train the embedder and the re-ranker of the knowledge base in ``corpus_dir`` and re-index
    it; returns what was trained and how long each step took. ``on_step(stage, done, total)``
    reports progress."""
    from leanstack.chipexpert.retrieval import Retriever

    def report(stage: str) -> Callable[[int, int], None]:
        return lambda done, total: on_step(stage, done, total) if on_step else None

    retriever = Retriever.load(corpus_dir)  # also checks that the index is current
    tuning = load_questions(split="tuning")
    t0 = time.perf_counter()
    manifest = train_embedder(corpus_dir, retriever.chunks, retriever.dense.vectors, tuning,
                              settings, report("fine-tuning the query encoder"))
    t1 = time.perf_counter()
    reranker = train_reranker(Retriever.load(corpus_dir), tuning)
    reranker.save(reranker_dir(corpus_dir))
    t2 = time.perf_counter()
    return {"embedder": manifest, "reranker": reranker.manifest,
            "train_embedder_s": round(t1 - t0, 1), "train_reranker_s": round(t2 - t1, 1)}
