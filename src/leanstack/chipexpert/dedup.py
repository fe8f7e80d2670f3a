"""Near-duplicate removal with MinHash LSH (datasketch): the first copy of a text is kept."""

from __future__ import annotations

import re
from dataclasses import dataclass

from datasketch import MinHash, MinHashLSH

from leanstack.chipexpert.chunking import Chunk

NUM_PERM = 128
SHINGLE = 5


@dataclass(frozen=True)
class DedupResult:
    """Chunks kept, and for each dropped chunk id the id of the kept chunk it duplicates."""

    kept: list[Chunk]
    dropped: dict[str, str]


def _minhash(text: str) -> MinHash:
    words = re.findall(r"\w+", text.lower())
    shingles = {" ".join(words[i:i + SHINGLE]) for i in range(max(1, len(words) - SHINGLE + 1))}
    m = MinHash(num_perm=NUM_PERM)
    m.update_batch([s.encode() for s in shingles])
    return m


def deduplicate(chunks: list[Chunk], threshold: float = 0.8) -> DedupResult:
    """Drop each chunk whose 5-word-shingle Jaccard similarity to an earlier kept chunk
    is estimated at or above ``threshold``."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError("threshold must be in (0, 1]")
    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    kept: list[Chunk] = []
    dropped: dict[str, str] = {}
    seen_ids: set[str] = set()
    for chunk in chunks:
        if chunk.id in seen_ids:
            continue
        m = _minhash(chunk.text)
        similar = lsh.query(m)
        if similar:
            dropped[chunk.id] = similar[0]
            continue
        lsh.insert(chunk.id, m)
        seen_ids.add(chunk.id)
        kept.append(chunk)
    return DedupResult(kept, dropped)
