"""Evidence sentences: every chunk cut into sentences, each embedded and BM25-indexed, so a
question is matched against the one sentence that answers it as well as against the whole chunk.

A chunk of ~100 words often holds several facts (a man page's options, a command's flags); its
single embedding is a blend of them, and the chunk next to it in the same section looks nearly
the same. The best-matching sentence of each chunk (``max_similarity``, ``max_bm25``) separates
such neighbours; the re-ranker (``rerank.py``) uses both as features.

Stored under ``<knowledge base>/models/sentences`` by ``leanstack chip tune-retriever`` (not by
``corpus build``, to keep that fast)::

    meta.json     corpus hash, sentence count, model name
    vectors.npy   one unit embedding per sentence (the base model's, like the chunks')
    rows.npy      the corpus row of each sentence's chunk
    bm25/         BM25 over "section title + sentence"
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from leanstack.chipexpert import dense
from leanstack.chipexpert.bm25 import BM25Index
from leanstack.chipexpert.chunking import Chunk
from leanstack.chipexpert.store import write_json
from leanstack.errors import LeanstackError

SENTENCES_DIR = Path("models") / "sentences"
MIN_WORDS = 4  # shorter pieces (an option name, "Default: 0.") join the sentence before them


def split_sentences(text: str) -> list[str]:
    """The sentences of a chunk: paragraphs and lines that start a new item are cut first, then
    prose at sentence ends; pieces under ``MIN_WORDS`` words join the previous one."""
    pieces = []
    for para in re.split(r"\n\s*\n|\n(?=[-+.]?\w)", text):
        for s in re.split(r"(?<=[.!?;:])\s+(?=[A-Z(\-.])", para):
            if s := " ".join(s.split()):
                pieces.append(s)
    merged: list[str] = []
    for s in pieces:
        if merged and len(s.split()) < MIN_WORDS:
            merged[-1] = f"{merged[-1]} {s}"
        else:
            merged.append(s)
    return merged or [" ".join(text.split())]


def sentences_dir(corpus_dir: Path) -> Path:
    """Where a knowledge base's sentence index lives."""
    return corpus_dir / SENTENCES_DIR


class SentenceIndex:
    """Sentence embeddings and BM25 with the chunk row of each sentence."""

    def __init__(self, vectors: np.ndarray, rows: np.ndarray, bm25: BM25Index,
                 chunk_count: int) -> None:
        self.vectors, self.rows, self.bm25, self.chunk_count = vectors, rows, bm25, chunk_count

    def _per_chunk_max(self, values: np.ndarray) -> np.ndarray:
        out = np.full(self.chunk_count, -1.0, dtype=np.float32)
        np.maximum.at(out, self.rows, values.astype(np.float32))
        return out

    def max_similarity(self, query_vector: np.ndarray) -> np.ndarray:
        """Per chunk: the cosine of its best-matching sentence with the query."""
        return self._per_chunk_max(self.vectors @ query_vector.astype(np.float32))

    def max_bm25(self, question: str) -> np.ndarray:
        """Per chunk: the BM25 score of its best-matching sentence (0 when none matches)."""
        return np.maximum(self._per_chunk_max(self.bm25.scores(question)), 0.0)

    @classmethod
    def build(cls, chunks: list[Chunk], model: dense.Encoder,
              on_progress: Callable[[int, int], None] | None = None) -> SentenceIndex:
        """Split, embed and index every chunk's sentences."""
        rows, texts = [], []
        for i, c in enumerate(chunks):
            for s in split_sentences(c.text):
                rows.append(i)
                texts.append(s)
        done = [0]

        def step(n: int) -> None:
            done[0] += n
            if on_progress:
                on_progress(done[0], len(texts))

        order = sorted(range(len(texts)), key=lambda j: len(texts[j]))  # less padding
        vectors = np.zeros((len(texts), model.get_embedding_dimension()), dtype=np.float32)
        vectors[order] = dense.embed(model, [texts[j] for j in order], step)
        bm25 = BM25Index.build([f"{chunks[r].section}\n{s}" for r, s in zip(rows, texts,
                                                                            strict=True)])
        return cls(vectors, np.asarray(rows, dtype=np.int32), bm25, len(chunks))

    def save(self, directory: Path, corpus_sha256: str) -> None:
        """Write the index into ``directory`` (replaced as a whole)."""
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=".sentences."))
        try:
            np.save(tmp / "vectors.npy", self.vectors)
            np.save(tmp / "rows.npy", self.rows)
            self.bm25.save(tmp / "bm25")
            write_json(tmp / "meta.json", {"corpus_sha256": corpus_sha256,
                                           "sentences": len(self.rows),
                                           "chunks": self.chunk_count,
                                           "model": dense.BASE_MODEL_NAME})
            shutil.rmtree(directory, ignore_errors=True)
            tmp.rename(directory)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def load(cls, directory: Path, corpus_sha256: str, chunk_count: int) -> SentenceIndex:
        """Read an index written by ``save``; a missing or stale one is a one-line error."""
        try:
            meta = json.loads((directory / "meta.json").read_text())
            vectors = np.load(directory / "vectors.npy")
            rows = np.load(directory / "rows.npy")
            bm25 = BM25Index.load(directory / "bm25")
        except (OSError, ValueError, KeyError) as e:
            raise LeanstackError(f"no readable sentence index in {directory} "
                                 f"({type(e).__name__}); run 'leanstack chip tune-retriever'") \
                from e
        if meta.get("corpus_sha256") != corpus_sha256 or meta.get("chunks") != chunk_count \
                or len(vectors) != len(rows) or (len(rows) and rows.max() >= chunk_count):
            raise LeanstackError(f"the sentence index in {directory} is older than the corpus; "
                                 "run 'leanstack chip tune-retriever' again")
        return cls(vectors, rows, bm25, chunk_count)
