"""The ``Retriever``: dense + BM25 search over the corpus, fused by reciprocal rank fusion, with
the index persisted next to the corpus.

Index layout (in ``<corpus dir>/index``)::

    meta.json      corpus hash, chunk ids, model name
    dense.npy      one unit embedding per chunk, in corpus order
    bm25/          the bm25s index files
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from leanstack.chipexpert import dense
from leanstack.chipexpert.bm25 import BM25Index
from leanstack.chipexpert.chunking import Chunk
from leanstack.chipexpert.corpus import CORPUS_FILE, load_corpus
from leanstack.chipexpert.fusion import reciprocal_rank_fusion
from leanstack.errors import LeanstackError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

INDEX_DIR = "index"
METHODS = ("fused", "dense", "bm25")
CANDIDATES = 50  # each retriever's list length fed into the fusion
MODEL_NAME = "all-MiniLM-L6-v2"


@dataclass(frozen=True)
class Hit:
    """One search result; ``score`` is the method's own (cosine, BM25 or fused RRF score)."""

    id: str
    source: str
    section: str
    text: str
    score: float

    def to_json(self) -> dict[str, object]:
        """The JSON record the CLI prints."""
        return asdict(self)


def index_text(chunk: Chunk) -> str:
    """What the dense retriever embeds: the section title, then the text."""
    return f"{chunk.section}\n{chunk.text}"


def bm25_text(chunk: Chunk) -> str:
    """What BM25 indexes: the title counts twice, a simple field weight (as in BM25F)."""
    return f"{chunk.section}\n{chunk.section}\n{chunk.text}"


def _corpus_hash(corpus_dir: Path) -> str:
    return hashlib.sha256((corpus_dir / CORPUS_FILE).read_bytes()).hexdigest()


def build_index(corpus_dir: Path, model: SentenceTransformer | None = None,
                on_progress: Callable[[int, int], None] | None = None) -> int:
    """Embed and BM25-index the corpus in ``corpus_dir``; returns how many chunks were embedded.
    Embeddings of chunks already in the previous index are reused, not recomputed."""
    chunks = load_corpus(corpus_dir)
    index_dir = corpus_dir / INDEX_DIR
    old = _old_vectors(index_dir)
    todo = [i for i, c in enumerate(chunks) if c.id not in old]
    fresh = np.zeros((0, 0), dtype=np.float32)
    if todo:
        model = model or dense.load_model()
        done = [0]

        def step(n: int) -> None:
            done[0] += n
            if on_progress:
                on_progress(done[0], len(todo))

        fresh = dense.embed(model, [index_text(chunks[i]) for i in todo], step)
    dim = fresh.shape[1] if todo else len(next(iter(old.values())))
    vectors = np.zeros((len(chunks), dim), dtype=np.float32)
    for i, c in enumerate(chunks):
        if c.id in old:
            vectors[i] = old[c.id]
    if todo:
        vectors[todo] = fresh
    # write everything into a fresh directory, then swap it in
    tmp = Path(tempfile.mkdtemp(dir=corpus_dir, prefix=".index."))
    try:
        np.save(tmp / "dense.npy", vectors)
        BM25Index.build([bm25_text(c) for c in chunks]).save(tmp / "bm25")
        meta = {"corpus_sha256": _corpus_hash(corpus_dir), "model": MODEL_NAME,
                "ids": [c.id for c in chunks]}
        (tmp / "meta.json").write_text(json.dumps(meta))
        if index_dir.exists():
            shutil.rmtree(index_dir)
        tmp.rename(index_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return len(todo)


def _old_vectors(index_dir: Path) -> dict[str, np.ndarray]:
    try:
        meta = json.loads((index_dir / "meta.json").read_text())
        ids = meta["ids"] if meta["model"] == MODEL_NAME else []
        vectors = np.load(index_dir / "dense.npy")
    except (OSError, ValueError, KeyError):
        return {}
    return dict(zip(ids, vectors, strict=False)) if len(ids) == len(vectors) else {}


class Retriever:
    """Search the knowledge base: ``Retriever.load(dir).search("question", k=3)``."""

    def __init__(self, chunks: list[Chunk], dense_index: dense.DenseIndex, bm25: BM25Index,
                 model: SentenceTransformer | None = None) -> None:
        self.chunks = chunks
        self.dense = dense_index
        self.bm25 = bm25
        self._model = model

    @classmethod
    def load(cls, corpus_dir: Path, model: SentenceTransformer | None = None) -> Retriever:
        """Open the index built by ``build_index``; a missing or stale one is a one-line error."""
        index_dir = corpus_dir / INDEX_DIR
        chunks = load_corpus(corpus_dir)
        try:
            meta = json.loads((index_dir / "meta.json").read_text())
        except (OSError, ValueError) as e:
            raise LeanstackError(f"no search index in {corpus_dir}; "
                                 "run 'leanstack chip corpus build'") from e
        if meta.get("corpus_sha256") != _corpus_hash(corpus_dir) or \
                meta.get("ids") != [c.id for c in chunks]:
            raise LeanstackError(f"the search index in {corpus_dir} is older than its corpus; "
                                 "run 'leanstack chip corpus build' again")
        vectors = np.load(index_dir / "dense.npy")
        return cls(chunks, dense.DenseIndex(vectors), BM25Index.load(index_dir / "bm25"), model)

    @property
    def model(self) -> SentenceTransformer:
        """The embedding model, loaded on first use."""
        if self._model is None:
            self._model = dense.load_model()
        return self._model

    def search(self, query: str, k: int = 3, method: str = "fused") -> list[Hit]:
        """The ``k`` best chunks for ``query`` by ``method`` (fused, dense or bm25)."""
        if method not in METHODS:
            raise LeanstackError(f"unknown retrieval method '{method}'; use one of "
                                 f"{', '.join(METHODS)}")
        if k < 1:
            raise LeanstackError(f"k must be at least 1 (got {k})")
        if not query.strip():
            raise LeanstackError("the query is empty; pass a question or keywords")
        if method == "bm25":
            ranked = self.bm25.search(query, k)
        else:
            qvec = dense.embed(self.model, [query])[0]
            dense_hits = self.dense.search(qvec, max(k, CANDIDATES))
            if method == "dense":
                ranked = dense_hits[:k]
            else:
                bm25_hits = self.bm25.search(query, max(k, CANDIDATES))
                ranked = reciprocal_rank_fusion([[i for i, _ in dense_hits],
                                                 [i for i, _ in bm25_hits]])[:k]
        return [Hit(self.chunks[i].id, self.chunks[i].source, self.chunks[i].section,
                    self.chunks[i].text, round(score, 6)) for i, score in ranked]
