"""Re-ranking of the fused top-20: a small learned scorer over features of each (question,
chunk) pair, trained on the tuning half of the chunk-level question set.

Features (``features``): the fused score and the fused rank, the dense cosine and the BM25 score
(relative to the best candidate), how many of the question's words the chunk's section title
and its text contain, whether the chunk is of a tool the question names, whether it opens its
section, and its length. A logistic regression on these (standardised) learns, for example,
that a title match matters more than fusion alone says. The model is a few numbers in
``<knowledge base>/models/reranker.json``; scoring needs numpy only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from leanstack.chipexpert import query
from leanstack.chipexpert.bm25 import tokenize
from leanstack.chipexpert.store import write_json
from leanstack.errors import LeanstackError

if TYPE_CHECKING:
    from leanstack.chipexpert.chunk_eval import ChunkQuestion
    from leanstack.chipexpert.retrieval import Retriever

RERANK_DEPTH = 20
RERANKER_FILE = Path("models") / "reranker.json"
FEATURES = ("fused", "fused_rank", "dense", "bm25", "title_overlap", "text_overlap",
            "named_tool", "first_of_section", "log_length")


def reranker_dir(corpus_dir: Path) -> Path:
    """Where a knowledge base's re-ranker is stored (a JSON file)."""
    return corpus_dir / RERANKER_FILE


def _overlap(words: set[str], text: str) -> float:
    return len(words & set(tokenize(text))) / len(words) if words else 0.0


def features(retriever: Retriever, question: str,
             candidates: list[tuple[int, float]]) -> np.ndarray:
    """One row of ``FEATURES`` per candidate (chunk row, fused score), in order."""
    if not candidates:
        return np.zeros((0, len(FEATURES)), dtype=np.float32)
    rows = [i for i, _ in candidates]
    qvec = retriever.query_vector(query.without_tools(question, retriever.tools))
    dense_scores = retriever.dense.vectors[rows] @ qvec
    bm25 = retriever.bm25.scores(question)[rows]
    bm25 = bm25 / bm25.max() if bm25.max() > 0 else bm25
    words = set(tokenize(question))
    named = query.mentioned_tools(question, retriever.tools)
    chunks = retriever.chunks
    out = []
    for rank, (i, fused) in enumerate(candidates):
        c = chunks[i]
        first = i == 0 or (chunks[i - 1].source, chunks[i - 1].section) != (c.source, c.section)
        out.append([fused, 1.0 / (1 + rank), dense_scores[rank], bm25[rank],
                    _overlap(words, c.section), _overlap(words, c.text),
                    float(bool(query.source_tools(c.source) & named)), float(first),
                    math.log(1 + len(c.text))])
    return np.asarray(out, dtype=np.float32)


class Reranker:
    """A logistic scorer over ``FEATURES``: ``rerank(retriever, question, candidates)``."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray, weights: np.ndarray, bias: float,
                 manifest: dict) -> None:
        self.mean, self.scale, self.weights, self.bias = mean, scale, weights, bias
        self.manifest = manifest

    def scores(self, feats: np.ndarray) -> np.ndarray:
        """The log-odds of each candidate holding the answer."""
        return ((feats - self.mean) / self.scale) @ self.weights + self.bias

    def rerank(self, retriever: Retriever, question: str,
               candidates: list[tuple[int, float]]) -> list[tuple[int, float]]:
        """``candidates`` re-ordered by the learned score (which becomes their score)."""
        if not candidates:
            return []
        s = self.scores(features(retriever, question, candidates))
        order = np.argsort(-s, kind="stable")
        return [(candidates[j][0], float(s[j])) for j in order]

    def save(self, path: Path) -> None:
        """Write the scorer as JSON."""
        write_json(path, {**self.manifest, "features": list(FEATURES),
                          "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                          "weights": self.weights.tolist(), "bias": self.bias})

    @classmethod
    def load(cls, path: Path) -> Reranker:
        """Read a scorer written by ``save``; a damaged or outdated file is a one-line error."""
        try:
            d = json.loads(path.read_text())
            if d["features"] != list(FEATURES):
                raise ValueError("other features")
            return cls(np.asarray(d["mean"], np.float32), np.asarray(d["scale"], np.float32),
                       np.asarray(d["weights"], np.float32), float(d["bias"]),
                       {k: v for k, v in d.items()
                        if k not in ("features", "mean", "scale", "weights", "bias")})
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise LeanstackError(f"{path}: not a usable re-ranker ({e}); run 'leanstack chip "
                                 "tune-retriever' to train it again") from e


def train_reranker(retriever: Retriever, tuning: list[ChunkQuestion],
                   per_section: int = 1) -> Reranker:
    """Fit the scorer on the fused top-``RERANK_DEPTH`` of every tuning question (label: the
    chunk holds the question's evidence)."""
    from sklearn.linear_model import LogisticRegression

    from leanstack.chipexpert.retrieval import one_per_section

    if any(q.split != "tuning" for q in tuning):
        raise LeanstackError("the re-ranker may only be trained on the tuning half")
    xs, ys = [], []
    for q in tuning:
        top = one_per_section(retriever.ranked(q.question, "fused", RERANK_DEPTH * 4),
                              retriever.chunks, RERANK_DEPTH, per_section)
        xs.append(features(retriever, q.question, top))
        ys.extend(retriever.chunks[i].id in q.chunk_ids for i, _ in top)
    x, y = np.concatenate(xs), np.asarray(ys, dtype=int)
    if y.sum() == 0 or y.sum() == len(y):
        raise LeanstackError("the tuning questions give no positive (or no negative) "
                             "candidates; check the question set against the corpus")
    mean, scale = x.mean(0), x.std(0) + 1e-6
    model = LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000)
    model.fit((x - mean) / scale, y)
    return Reranker(mean, scale, model.coef_[0].astype(np.float32), float(model.intercept_[0]),
                    {"trained_on": "tuning half", "questions": len(tuning),
                     "candidates": len(y), "positives": int(y.sum()), "depth": RERANK_DEPTH})
