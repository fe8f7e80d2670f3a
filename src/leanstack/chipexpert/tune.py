"""``leanstack chip tune-retriever``: fine-tune the query side of the embedder, build the
evidence-sentence index when the re-ranker's feature set uses it, then train the re-ranker, the
trained parts on the tuning half of the chunk-level question set only (see ``finetune.py``,
``sentences.py`` and ``rerank.py``); the chunk embeddings in the index stay as they are."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from leanstack.chipexpert import dense
from leanstack.chipexpert.chunk_eval import load_questions
from leanstack.chipexpert.finetune import TuneSettings, train_embedder
from leanstack.chipexpert.rerank import (
    DEFAULT_FEATURE_SET,
    FEATURE_SETS,
    SENTENCE_FEATURES,
    reranker_dir,
    train_reranker,
)
from leanstack.chipexpert.sentences import SentenceIndex, sentences_dir
from leanstack.errors import LeanstackError

if TYPE_CHECKING:
    from leanstack.chipexpert.retrieval import Retriever


def ensure_sentence_index(retriever: Retriever, corpus_dir: Path,
                          on_progress: Callable[[int, int], None] | None = None) -> None:
    """Give ``retriever`` the knowledge base's sentence index, building and saving it when there
    is none for this corpus (it embeds every sentence: ~20k, minutes on two cores)."""
    try:  # kept from an earlier run when the corpus is the same
        retriever.sentences  # noqa: B018 -- loads and checks it
    except LeanstackError:
        retriever.sentences = SentenceIndex.build(retriever.chunks, dense.load_model(threads=1),
                                                  on_progress)
        retriever.sentences.save(sentences_dir(corpus_dir), retriever.corpus_sha256)


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
                              settings, report("fine-tuning the query encoder"),
                              report("writing synthetic questions with the local model"))
    t1 = time.perf_counter()
    retriever = Retriever.load(corpus_dir)
    if set(FEATURE_SETS[DEFAULT_FEATURE_SET]) & set(SENTENCE_FEATURES):
        ensure_sentence_index(retriever, corpus_dir, report("embedding sentences"))
    t2 = time.perf_counter()
    reranker = train_reranker(retriever, tuning)
    reranker.save(reranker_dir(corpus_dir))
    t3 = time.perf_counter()
    return {"embedder": manifest, "reranker": reranker.manifest,
            "train_embedder_s": round(t1 - t0, 1), "sentence_index_s": round(t2 - t1, 1),
            "train_reranker_s": round(t3 - t2, 1)}
