"""Re-ranking of the fused top-20: a small learned scorer over features of each (question,
chunk) pair, trained on the tuning half of the chunk-level question set.

Features (``features``): the fused score and the fused rank, the dense cosine and the BM25 score
(relative to the best candidate), how many of the question's words the chunk's section title
and its text contain, whether the chunk is of a tool the question names, whether it opens its
section, and its length; and, from the evidence-sentence index (``sentences.py``), the cosine
and the BM25 score of the chunk's best-matching sentence (relative to the best candidate's).
The sentence features are what tell neighbouring chunks of one section apart. A logistic
regression on these (standardised) learns how much each signal counts. The model is a few
numbers in ``<knowledge base>/models/reranker.json``, naming the features it uses; scoring
needs numpy only.
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
CHUNK_FEATURES = ("fused", "fused_rank", "dense", "bm25", "title_overlap", "text_overlap",
                  "named_tool", "first_of_section", "log_length")
SENTENCE_FEATURES = ("sentence_dense", "sentence_dense_gap", "sentence_bm25")
FEATURES = CHUNK_FEATURES + SENTENCE_FEATURES
# Feature sets compared by cross-validation on the tuning half (benchmarks/
# chip_chunk_retrieval.py). The sentence features did not raise recall@3 there (chunk 0.77,
# chunk + sentence 0.75-0.77 over 5 folds), so the default stays "chunk", which needs no
# sentence index.
FEATURE_SETS = {"chunk": CHUNK_FEATURES, "sentence": FEATURES}
DEFAULT_FEATURE_SET = "chunk"


def reranker_dir(corpus_dir: Path) -> Path:
    """Where a knowledge base's re-ranker is stored (a JSON file)."""
    return corpus_dir / RERANKER_FILE


def _overlap(words: set[str], text: str) -> float:
    return len(words & set(tokenize(text))) / len(words) if words else 0.0


def features(retriever: Retriever, question: str, candidates: list[tuple[int, float]],
             names: tuple[str, ...] = FEATURES) -> np.ndarray:
    """One row of the features ``names`` per candidate (chunk row, fused score), in order."""
    if unknown := set(names) - set(FEATURES):
        raise LeanstackError(f"unknown re-ranker features {sorted(unknown)}; the known ones "
                             f"are {', '.join(FEATURES)}")
    if not candidates:
        return np.zeros((0, len(names)), dtype=np.float32)
    rows = [i for i, _ in candidates]
    qvec = retriever.query_vector(query.without_tools(question, retriever.tools))
    cols: dict[str, np.ndarray] = {}
    cols["dense"] = retriever.dense.vectors[rows] @ qvec
    cols["bm25"] = _relative(retriever.bm25.scores(question)[rows])
    if set(names) & set(SENTENCE_FEATURES):
        sentences = retriever.sentences
        best = sentences.max_similarity(qvec)[rows]
        cols["sentence_dense"] = best
        cols["sentence_dense_gap"] = best - best.max()
        cols["sentence_bm25"] = _relative(sentences.max_bm25(question)[rows])
    words = set(tokenize(question))
    named = query.mentioned_tools(question, retriever.tools)
    chunks = retriever.chunks
    cols["fused"] = np.array([score for _, score in candidates])
    cols["fused_rank"] = 1.0 / (1 + np.arange(len(candidates)))
    cols["title_overlap"] = np.array([_overlap(words, chunks[i].section) for i in rows])
    cols["text_overlap"] = np.array([_overlap(words, chunks[i].text) for i in rows])
    cols["named_tool"] = np.array([bool(query.source_tools(chunks[i].source) & named)
                                   for i in rows], dtype=float)
    cols["first_of_section"] = np.array(
        [i == 0 or (chunks[i - 1].source, chunks[i - 1].section) !=
         (chunks[i].source, chunks[i].section) for i in rows], dtype=float)
    cols["log_length"] = np.array([math.log(1 + len(chunks[i].text)) for i in rows])
    return np.stack([np.asarray(cols[n], dtype=np.float32) for n in names], axis=1)


def _relative(scores: np.ndarray) -> np.ndarray:
    """Scores divided by the best candidate's (unchanged when none is positive)."""
    return scores / scores.max() if scores.max() > 0 else scores


class Reranker:
    """A logistic scorer over named features: ``rerank(retriever, question, candidates)``."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray, weights: np.ndarray, bias: float,
                 manifest: dict, names: tuple[str, ...] = FEATURES) -> None:
        self.mean, self.scale, self.weights, self.bias = mean, scale, weights, bias
        self.manifest = manifest
        self.names = names

    def scores(self, feats: np.ndarray) -> np.ndarray:
        """The log-odds of each candidate holding the answer."""
        return ((feats - self.mean) / self.scale) @ self.weights + self.bias

    def rerank(self, retriever: Retriever, question: str,
               candidates: list[tuple[int, float]]) -> list[tuple[int, float]]:
        """``candidates`` re-ordered by the learned score (which becomes their score)."""
        if not candidates:
            return []
        s = self.scores(features(retriever, question, candidates, self.names))
        order = np.argsort(-s, kind="stable")
        return [(candidates[j][0], float(s[j])) for j in order]

    def save(self, path: Path) -> None:
        """Write the scorer as JSON."""
        write_json(path, {**self.manifest, "features": list(self.names),
                          "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                          "weights": self.weights.tolist(), "bias": self.bias})

    @classmethod
    def load(cls, path: Path) -> Reranker:
        """Read a scorer written by ``save``; a damaged or outdated file is a one-line error."""
        try:
            d = json.loads(path.read_text())
            names = tuple(d["features"])
            if not names or set(names) - set(FEATURES):
                raise ValueError(f"unknown features {sorted(set(names) - set(FEATURES))}")
            weights = np.asarray(d["weights"], np.float32)
            if weights.shape != (len(names),):
                raise ValueError("one weight per feature is needed")
            return cls(np.asarray(d["mean"], np.float32), np.asarray(d["scale"], np.float32),
                       weights, float(d["bias"]),
                       {k: v for k, v in d.items()
                        if k not in ("features", "mean", "scale", "weights", "bias")}, names)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise LeanstackError(f"{path}: not a usable re-ranker ({e}); run 'leanstack chip "
                                 "tune-retriever' to train it again") from e


def train_reranker(retriever: Retriever, tuning: list[ChunkQuestion], per_section: int = 0,
                   feature_set: str = DEFAULT_FEATURE_SET) -> Reranker:
    """Fit the scorer over the features of ``FEATURE_SETS[feature_set]`` on the fused
    top-``RERANK_DEPTH`` of every tuning question (label: the chunk holds the question's
    evidence)."""
    from sklearn.linear_model import LogisticRegression

    from leanstack.chipexpert.retrieval import one_per_section

    if any(q.split != "tuning" for q in tuning):
        raise LeanstackError("the re-ranker may only be trained on the tuning half")
    if feature_set not in FEATURE_SETS:
        raise LeanstackError(f"unknown re-ranker feature set '{feature_set}'; use one of "
                             f"{', '.join(FEATURE_SETS)}")
    names = FEATURE_SETS[feature_set]
    xs, ys = [], []
    for q in tuning:
        top = one_per_section(retriever.ranked(q.question, "fused", RERANK_DEPTH * 4),
                              retriever.chunks, RERANK_DEPTH, per_section)
        xs.append(features(retriever, q.question, top, names))
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
                     "candidates": len(y), "positives": int(y.sum()), "depth": RERANK_DEPTH,
                     "feature_set": feature_set}, names)
