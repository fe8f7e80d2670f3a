"""Sparse retrieval: BM25 over a code-aware tokenisation, persisted with bm25s."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import bm25s
import numpy as np
import snowballstemmer
from bm25s.stopwords import STOPWORDS_EN

_STOP = frozenset(STOPWORDS_EN) | {"can", "how", "what", "which", "does", "do", "i", "you"}
_TOKEN = re.compile(r"[a-z0-9_$.]*[a-z0-9_$]")
_STEMMER = snowballstemmer.stemmer("english")


@lru_cache(maxsize=200_000)
def _stem(word: str) -> str:
    return _STEMMER.stemWord(word) if word.isalpha() else word


def tokenize(text: str) -> list[str]:
    """Lower-case, Snowball-stemmed words; identifiers like ``opt_clean`` or ``.meas`` are kept
    whole and also split into their parts, so both a command name and the words in it match."""
    tokens = []
    for tok in _TOKEN.findall(text.lower()):
        tok = tok.lstrip(".")
        if not tok or tok in _STOP:
            continue
        tokens.append(_stem(tok))
        parts = [_stem(p) for p in re.split(r"[_$.]+", tok) if p and p not in _STOP]
        if len(parts) > 1:
            tokens.extend(parts)
    return tokens


class BM25Index:
    """BM25 (Okapi, k1=1.5, b=0.75) over a list of texts, addressed by row number."""

    def __init__(self, model: bm25s.BM25, size: int) -> None:
        self._model = model
        self.size = size

    @classmethod
    def build(cls, texts: list[str]) -> BM25Index:
        """Index ``texts``; row i of the index is ``texts[i]``."""
        model = bm25s.BM25(k1=1.5, b=0.75)
        model.index([tokenize(t) for t in texts], show_progress=False)
        return cls(model, len(texts))

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        """The best ``k`` rows for ``query`` with their BM25 scores; rows scoring 0 are left out."""
        tokens = [t for t in tokenize(query) if t in self._model.vocab_dict]
        if not tokens or self.size == 0:
            return []
        docs, scores = self._model.retrieve([tokens], k=min(k, self.size), show_progress=False)
        return [(int(d), float(s)) for d, s in zip(docs[0], scores[0], strict=True) if s > 0]

    def scores(self, query: str) -> np.ndarray:
        """The BM25 score of every row for ``query`` (zeros when no query word is indexed)."""
        tokens = [t for t in tokenize(query) if t in self._model.vocab_dict]
        if not tokens or self.size == 0:
            return np.zeros(self.size, dtype=np.float32)
        return np.asarray(self._model.get_scores(tokens), dtype=np.float32)

    def save(self, directory: Path) -> None:
        """Write the index files into ``directory``."""
        self._model.save(str(directory), show_progress=False)
        np.save(directory / "size.npy", np.array([self.size]))

    @classmethod
    def load(cls, directory: Path) -> BM25Index:
        """Read an index written by ``save``."""
        model = bm25s.BM25.load(str(directory), show_progress=False)
        return cls(model, int(np.load(directory / "size.npy")[0]))
