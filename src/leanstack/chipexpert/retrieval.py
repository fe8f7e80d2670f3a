"""The ``Retriever``: dense + BM25 search over the corpus, fused, with the index persisted next to
the corpus.

Fused search (the default): the question's tool names are taken out of the dense query and turned
into a small prior for that tool's sources (``query.py``); dense cosine and BM25 scores of every
chunk are min-max normalised and combined convexly (``fusion.py``); a result list may hold
several chunks of one section (``PER_SECTION``). Questions are embedded by the knowledge base's
fine-tuned query encoder when one was trained (``finetune.py``), and ``reranked`` search
re-orders the fused top 20 with a learned scorer (``rerank.py``; one of its feature sets also
matches the question against each chunk's sentences, ``sentences.py``). ``auto`` (the default)
is ``reranked`` where ``leanstack chip tune-retriever`` trained a re-ranker, else ``fused``.

Index layout (in ``<corpus dir>/index``)::

    meta.json      format version, corpus hash, chunk ids, hashes of the embedded texts, model
    dense.npy      one unit embedding per chunk, in corpus order
    bm25/          the bm25s index files

Embeddings come from the caches of ``embedding_cache.py`` where the same text was embedded
before (``<corpus dir>/embedding-cache.npz``, the package's prebuilt one).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from leanstack.chipexpert import dense, query
from leanstack.chipexpert.bm25 import BM25Index
from leanstack.chipexpert.chunking import Chunk, heading_paths
from leanstack.chipexpert.corpus import CORPUS_FILE, load_corpus
from leanstack.chipexpert.finetune import finetuned_dir, finetuned_name
from leanstack.chipexpert.fusion import convex_fusion, reciprocal_rank_fusion
from leanstack.chipexpert.rerank import RERANK_DEPTH, Reranker, reranker_dir
from leanstack.chipexpert.sentences import SentenceIndex, sentences_dir
from leanstack.chipexpert.store import write_json
from leanstack.errors import LeanstackError

INDEX_DIR = "index"
# Bump when what is indexed changes (index_text, bm25_text): older indexes are then rebuilt.
INDEX_VERSION = 2
METHODS = ("fused", "rrf", "dense", "bm25")
RERANKED = "reranked"  # fused, then the trained re-ranker (only where one was trained)
AUTO = "auto"  # reranked where a re-ranker was trained, else fused: the default
CANDIDATES = 50  # each retriever's list length fed into reciprocal rank fusion
MODEL_NAME = dense.BASE_MODEL_NAME
# How many chunks of one section a result list may hold (0: any number); chosen on the tuning
# half of the chunk-level question set (benchmarks/chip_chunk_retrieval.py: recall@3 0.71 with
# no limit against 0.60 with one chunk per section).
PER_SECTION = 0
# Weight of the dense score in the convex fusion; chosen on the even-numbered half of the
# question set (benchmarks/chip_retrieval.py reports the other half as held out).
DENSE_WEIGHT = 0.7
QUERY_CACHE = 512
TOOL_PRIOR = 0.1  # added to the fused score (range 0..1) of chunks of a tool the question names


@dataclass(frozen=True)
class Hit:
    """One search result; ``score`` is the method's own (cosine, BM25, RRF or fused score)."""

    id: str
    source: str
    section: str
    text: str
    score: float

    def to_json(self) -> dict[str, object]:
        """The JSON record the CLI prints."""
        return asdict(self)


def index_text(chunk: Chunk, heading: str | None = None) -> str:
    """What the dense retriever embeds: the heading path (default: the section title), then the
    text."""
    return f"{heading or chunk.section}\n{chunk.text}"


def bm25_text(chunk: Chunk) -> str:
    """What BM25 indexes: the source's words (``man iverilog``), then the title twice (a simple
    field weight, as in BM25F), then the text."""
    return f"{' '.join(re.split(r'[-_]', chunk.source))}\n{chunk.section}\n{chunk.section}\n" \
           f"{chunk.text}"


def _corpus_hash(corpus_dir: Path) -> str:
    return hashlib.sha256((corpus_dir / CORPUS_FILE).read_bytes()).hexdigest()


def query_encoder(corpus_dir: Path) -> tuple[str, Path | None, str]:
    """The model that embeds questions for a knowledge base: its fine-tuned query encoder when
    one was trained (``leanstack chip tune-retriever``), else the base all-MiniLM-L6-v2 (path
    None); plus a one-line note saying which, for the CLI."""
    if name := finetuned_name(corpus_dir):
        return name, finetuned_dir(corpus_dir), f"query encoder: fine-tuned {name}"
    return MODEL_NAME, None, (f"query encoder: base {MODEL_NAME} (no fine-tuned one in "
                              f"{finetuned_dir(corpus_dir)}; 'leanstack chip tune-retriever' "
                              "trains one)")


def build_index(corpus_dir: Path, model: dense.Encoder | None = None,
                on_progress: Callable[[int, int], None] | None = None, *,
                on_source: Callable[[str, int, int], None] | None = None,
                on_note: Callable[[str], None] | None = None, prebuilt: bool = True) -> int:
    """Embed and BM25-index the corpus in ``corpus_dir``; returns how many chunks were embedded.
    Chunks are embedded by the base model (a fine-tuned query encoder is trained against these
    embeddings), one source after another; a chunk whose text is in an embedding cache
    (``embedding_cache.py``: the knowledge base's own, then with ``prebuilt`` the package's) is
    not embedded again. ``on_progress(done, total)`` and ``on_source(source, done, total)``
    follow the embedding; ``on_note`` gets one line per cache that could not be used."""
    from leanstack.chipexpert import embedding_cache as ec

    chunks = load_corpus(corpus_dir)
    paths = heading_paths(chunks)
    texts = [index_text(c, paths[(c.source, c.section)]) for c in chunks]
    keys = [ec.text_key(t) for t in texts]
    model_id = ec.model_id()
    caches = ec.lookup_caches(corpus_dir, model_id, prebuilt)
    for note in (c.note for c in caches if c.note):
        if on_note:
            on_note(note)
    found: dict[str, np.ndarray] = {}
    for key in dict.fromkeys(keys):
        if (vec := next((v for c in caches if (v := c.get(key)) is not None), None)) is not None:
            found[key] = vec
    todo = [i for i, key in enumerate(keys) if key not in found]
    if todo:
        model = model or dense.load_model()
        by_source: dict[str, list[int]] = {}
        for i in todo:
            by_source.setdefault(chunks[i].source, []).append(i)
        done = 0
        for source, rows in by_source.items():
            source_done = 0
            if on_source:
                on_source(source, 0, len(rows))

            def step(n: int, source: str = source, rows: list[int] = rows) -> None:
                nonlocal done, source_done
                done, source_done = done + n, source_done + n
                if on_progress:
                    on_progress(done, len(todo))
                if on_source:
                    on_source(source, source_done, len(rows))

            fresh = ec.as_stored(dense.embed(model, [texts[i] for i in rows], step))
            found.update((keys[i], vec) for i, vec in zip(rows, fresh, strict=True))
    dim = len(next(iter(found.values()))) if found else 0
    vectors = np.zeros((len(chunks), dim), dtype=np.float32)
    for i, key in enumerate(keys):
        vectors[i] = found[key]
    tmp = Path(tempfile.mkdtemp(dir=corpus_dir, prefix=".index."))
    try:
        np.save(tmp / "dense.npy", vectors)
        BM25Index.build([bm25_text(c) for c in chunks]).save(tmp / "bm25")
        write_json(tmp / "meta.json", {
            "version": INDEX_VERSION, "corpus_sha256": _corpus_hash(corpus_dir),
            "model": MODEL_NAME, "ids": [c.id for c in chunks],
            "text_keys": keys})
        _swap_in(tmp, corpus_dir / INDEX_DIR)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    local = caches[0]
    if local.note or any(k not in local.vectors for k in found) or \
            not (corpus_dir / ec.CACHE_FILE).exists():
        local.vectors.update(found)
        local.save(corpus_dir / ec.CACHE_FILE, first=keys)
    return len(todo)


def _swap_in(new: Path, index_dir: Path) -> None:
    """Replace ``index_dir`` by the complete directory ``new``: the old index is renamed aside
    first and removed only after the new one is in place, so a crash leaves one whole index
    (or, between the two renames, none, which ``Retriever.load`` reports)."""
    old = None
    if index_dir.exists():
        old = Path(tempfile.mkdtemp(dir=index_dir.parent, prefix=".index-old."))
        index_dir.rename(old / INDEX_DIR)
    try:
        new.rename(index_dir)
    except BaseException:
        if old is not None:  # put the old index back
            (old / INDEX_DIR).rename(index_dir)
            old.rmdir()
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def one_per_section(ranked: list[tuple[int, float]], chunks: list[Chunk],
                    k: int, per_section: int = 1) -> list[tuple[int, float]]:
    """The first ``k`` of ``ranked`` keeping only the best ``per_section`` chunks of each
    (source, section) (0: no limit)."""
    seen: dict[tuple[str, str], int] = {}
    out = []
    for i, score in ranked:
        key = (chunks[i].source, chunks[i].section)
        if not per_section or seen.get(key, 0) < per_section:
            seen[key] = seen.get(key, 0) + 1
            out.append((i, score))
            if len(out) == k:
                break
    return out


class Retriever:
    """Search the knowledge base: ``Retriever.load(dir).search("question", k=3)``."""

    def __init__(self, chunks: list[Chunk], dense_index: dense.DenseIndex, bm25: BM25Index,
                 model: dense.Encoder | None = None, model_path: Path | None = None) -> None:
        self.chunks = chunks
        self.dense = dense_index
        self.bm25 = bm25
        self._model = model
        self.tools = query.tool_vocabulary({c.source for c in chunks})
        self._source_tools = [query.source_tools(c.source) for c in chunks]
        self.dense_weight = DENSE_WEIGHT
        self.per_section = PER_SECTION
        self.reranker: Reranker | None = None
        self.sentences_path: Path | None = None  # the evidence-sentence index, loaded on use
        self._sentences: SentenceIndex | None = None
        self._model_path = model_path  # the query encoder's directory; None: the base model
        self.query_model_name = MODEL_NAME if model_path is None else str(model_path)
        self._query_vectors: dict[str, np.ndarray] = {}

    @classmethod
    def load(cls, corpus_dir: Path, model: dense.Encoder | None = None) -> Retriever:
        """Open the index built by ``build_index``; a missing or stale one is a one-line error."""
        index_dir = corpus_dir / INDEX_DIR
        chunks = load_corpus(corpus_dir)
        try:
            meta = json.loads((index_dir / "meta.json").read_text())
        except (OSError, ValueError) as e:
            raise LeanstackError(f"no search index in {corpus_dir}; "
                                 "run 'leanstack chip corpus build'") from e
        if meta.get("version") != INDEX_VERSION:
            raise LeanstackError(f"the search index in {corpus_dir} has an older format; "
                                 "run 'leanstack chip corpus build' to rebuild it")
        if meta.get("corpus_sha256") != _corpus_hash(corpus_dir) or \
                meta.get("ids") != [c.id for c in chunks]:
            raise LeanstackError(f"the search index in {corpus_dir} is older than its corpus; "
                                 "run 'leanstack chip corpus build' again")
        try:
            vectors = np.load(index_dir / "dense.npy")
        except (OSError, ValueError) as e:
            raise LeanstackError(f"the search index in {corpus_dir} has no readable dense.npy "
                                 f"({type(e).__name__}); run 'leanstack chip corpus build' to "
                                 "rebuild it") from e
        if vectors.ndim != 2 or len(vectors) != len(chunks):
            raise LeanstackError(f"the search index in {corpus_dir} holds {len(vectors)} "
                                 f"embeddings for {len(chunks)} chunks; run 'leanstack chip "
                                 "corpus build' to rebuild it")
        try:
            bm25 = BM25Index.load(index_dir / "bm25")
        except (OSError, ValueError, KeyError) as e:
            raise LeanstackError(f"the search index in {corpus_dir} has no readable bm25/ "
                                 f"({type(e).__name__}); run 'leanstack chip corpus build' to "
                                 "rebuild it") from e
        name, path, _ = query_encoder(corpus_dir)
        retriever = cls(chunks, dense.DenseIndex(vectors), bm25, model, path)
        retriever.query_model_name = name
        if reranker_dir(corpus_dir).exists():
            retriever.reranker = Reranker.load(reranker_dir(corpus_dir))
        retriever.sentences_path = sentences_dir(corpus_dir)
        return retriever

    @property
    def sentences(self) -> SentenceIndex:
        """The evidence-sentence index (``sentences.py``), loaded on first use."""
        if self._sentences is None:
            if self.sentences_path is None:
                raise LeanstackError("this retriever has no sentence index; run 'leanstack "
                                     "chip tune-retriever'")
            self._sentences = SentenceIndex.load(self.sentences_path, self.corpus_sha256,
                                                 len(self.chunks))
        return self._sentences

    @sentences.setter
    def sentences(self, index: SentenceIndex) -> None:
        self._sentences = index

    @property
    def corpus_sha256(self) -> str:
        """Hash of the chunk ids, the identity the sentence index is checked against."""
        return hashlib.sha256("\n".join(c.id for c in self.chunks).encode()).hexdigest()

    @property
    def model(self) -> dense.Encoder:
        """The question encoder, loaded on first use: the numpy one (``query_encoder.py``),
        which spares a search the import of torch."""
        if self._model is None:
            from leanstack.chipexpert.query_encoder import load_query_encoder

            self._model = load_query_encoder(self._model_path)
        return self._model

    def search(self, text: str, k: int = 3, method: str = AUTO,
               per_section: int | None = None) -> list[Hit]:
        """The ``k`` best chunks for ``text`` by ``method``, at most ``per_section`` (default
        ``PER_SECTION``; 0: any number) per section: auto (default: reranked where a re-ranker
        was trained, else fused), reranked (the fused top-20 re-ordered by the trained
        re-ranker), fused, rrf (reciprocal rank fusion), dense or bm25."""
        if method not in (AUTO, RERANKED, *METHODS):
            raise LeanstackError(f"unknown retrieval method '{method}'; use one of "
                                 f"{', '.join((AUTO, RERANKED, *METHODS))}")
        method = self.resolve(method)
        if k < 1:
            raise LeanstackError(f"k must be at least 1 (got {k})")
        if not text.strip():
            raise LeanstackError("the query is empty; pass a question or keywords")
        per_section = self.per_section if per_section is None else per_section
        ranked = self.ranked(text, method, max(k, CANDIDATES) * 4)  # room to drop chunks
        return [Hit(self.chunks[i].id, self.chunks[i].source, self.chunks[i].section,
                    self.chunks[i].text, round(score, 6))
                for i, score in one_per_section(ranked, self.chunks, k, per_section)]

    def resolve(self, method: str) -> str:
        """The method ``auto`` stands for here (any other method: itself)."""
        if method != AUTO:
            return method
        return RERANKED if self.reranker is not None else "fused"

    def ranked(self, text: str, method: str, depth: int) -> list[tuple[int, float]]:
        """The ``depth`` best (chunk row, score) pairs by ``method``, no per-section limit."""
        method = self.resolve(method)
        if method == "bm25":
            ranked = self.bm25.search(text, depth)
        elif method == "dense":
            ranked = self.dense.search(self._embed(text), depth)
        elif method == "rrf":
            dense_ids = [i for i, _ in self.dense.search(self._embed(text), CANDIDATES)]
            bm25_ids = [i for i, _ in self.bm25.search(text, CANDIDATES)]
            ranked = reciprocal_rank_fusion([dense_ids, bm25_ids])
        elif method == RERANKED:
            ranked = self._reranked(text, depth)
        else:
            ranked = self._fused(text, depth)
        return ranked

    def _reranked(self, text: str, depth: int) -> list[tuple[int, float]]:
        """The fused top ``RERANK_DEPTH`` (per-section limit applied) re-ordered by the
        re-ranker, then the rest of the fused list."""
        if self.reranker is None:
            raise LeanstackError("this knowledge base has no re-ranker; run 'leanstack chip "
                                 "tune-retriever' or use --method fused")
        fused = self._fused(text, depth)
        top = one_per_section(fused, self.chunks, RERANK_DEPTH, self.per_section)
        head = {i for i, _ in top}
        return self.reranker.rerank(self, text, top) + [r for r in fused if r[0] not in head]

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length embeddings of ``texts`` by the index's model (one row each)."""
        return dense.embed(self.model, texts)

    def clear_query_cache(self) -> None:
        """Forget the cached query embeddings (for timing each method from cold)."""
        self._query_vectors.clear()

    def query_vector(self, text: str) -> np.ndarray:
        """The query's unit embedding by the index's model (cached)."""
        return self._embed(text)

    def _embed(self, text: str) -> np.ndarray:
        """The query's embedding; the last few hundred are kept (evaluations repeat queries)."""
        if (vec := self._query_vectors.get(text)) is None:
            if len(self._query_vectors) >= QUERY_CACHE:
                self._query_vectors.clear()
            vec = self._query_vectors[text] = dense.embed(self.model, [text])[0]
        return vec

    def _fused(self, text: str, depth: int) -> list[tuple[int, float]]:
        """Convex fusion of dense (question without tool names) and BM25 (whole question)
        scores, plus the prior for chunks of the tools the question names."""
        if len(self.chunks) == 0:
            return []
        dense_scores = self.dense.vectors @ self._embed(query.without_tools(text, self.tools))
        scores = convex_fusion(dense_scores, self.bm25.scores(text), self.dense_weight)
        if named := query.mentioned_tools(text, self.tools):
            scores = scores + TOOL_PRIOR * np.array([bool(t & named) for t in self._source_tools])
        top = np.argsort(-scores, kind="stable")[:depth]
        return [(int(i), float(scores[i])) for i in top]
