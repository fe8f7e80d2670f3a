"""Rebuild the prebuilt chunk-embedding cache shipped in the package
(``src/leanstack/chipexpert/data/chunk_embeddings.npz``), which spares ``chip corpus build``
embedding the chunks of the Debian 12 documentation the default sources read.

Steps: build the corpus of the default sources into a temporary directory; seed its embedding
cache with the vectors of an already built knowledge base (``--kb``; only chunks whose exact
text it holds, by SHA-256); embed the rest with all-MiniLM-L6-v2 (``build_index``); re-embed
``--check`` random chunks and compare them with the cached vectors; write the cache (float16,
keyed by text hash and model id). A chunk whose text differs on another machine simply misses
the cache and is embedded there.

    nice -n 10 .venv/bin/python scripts/chip_prebuilt_embeddings.py [--kb DIR] [--check 64]

Without ``--kb`` every chunk is embedded (about 3,700; minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from leanstack.chipexpert import dense
from leanstack.chipexpert import embedding_cache as ec
from leanstack.chipexpert.chunking import heading_paths
from leanstack.chipexpert.corpus import build_corpus, load_corpus
from leanstack.chipexpert.retrieval import INDEX_DIR, build_index, index_text
from leanstack.chipexpert.sources import default_sources

OUT = Path(__file__).resolve().parents[1] / "src" / "leanstack" / "chipexpert" / "data" / \
    ec.PREBUILT


def index_texts(kb: Path) -> list[str]:
    """The texts the index of ``kb`` embedded, in corpus order."""
    chunks = load_corpus(kb)
    paths = heading_paths(chunks)
    return [index_text(c, paths[(c.source, c.section)]) for c in chunks]


def seed_from(kb: Path, model: str) -> ec.EmbeddingCache:
    """The vectors of ``kb``: its embedding cache if it has one, else its index."""
    cache = ec.EmbeddingCache.load(kb / ec.CACHE_FILE, model)
    if len(cache):
        return cache
    meta = json.loads((kb / INDEX_DIR / "meta.json").read_text())
    if meta.get("model") != dense.BASE_MODEL_NAME:
        raise SystemExit(f"{kb}: its index was embedded by {meta.get('model')!r}")
    vectors = np.load(kb / INDEX_DIR / "dense.npy")
    texts = index_texts(kb)
    if len(texts) != len(vectors):
        raise SystemExit(f"{kb}: {len(vectors)} vectors for {len(texts)} chunks; rebuild it")
    return ec.EmbeddingCache(model, {ec.text_key(t): ec.as_stored(v)
                                     for t, v in zip(texts, vectors, strict=True)})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kb", type=Path, help="a built knowledge base to take vectors from")
    p.add_argument("--check", type=int, default=64, help="chunks re-embedded to verify")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    model = ec.model_id()
    work = Path(tempfile.mkdtemp(prefix="chip-prebuilt-"))
    try:
        build_corpus(work, default_sources())
        texts = index_texts(work)
        keys = [ec.text_key(t) for t in texts]
        if args.kb:
            seed = seed_from(args.kb, model)
            hits = {k: seed.vectors[k] for k in keys if k in seed.vectors}
            ec.EmbeddingCache(model, hits).save(work / ec.CACHE_FILE)
            print(f"{len(hits)} of {len(keys)} chunks found in {args.kb}")
        t0 = time.perf_counter()
        embedded = build_index(work, prebuilt=False)
        print(f"{embedded} chunks embedded in {time.perf_counter() - t0:.0f} s")
        cache = ec.EmbeddingCache.load(work / ec.CACHE_FILE, model)
        sample = random.Random(0).sample(range(len(texts)), min(args.check, len(texts)))
        fresh = dense.embed(dense.load_model(), [texts[i] for i in sample])
        cos = [float(fresh[j] @ cache.vectors[keys[i]]) for j, i in enumerate(sample)]
        print(f"check: {len(sample)} chunks re-embedded, lowest cosine with the cache "
              f"{min(cos):.5f}")
        if min(cos) < 0.999:
            raise SystemExit("the cached vectors do not match the model; rebuild without --kb")
        shipped = ec.EmbeddingCache(model, {k: cache.vectors[k] for k in dict.fromkeys(keys)})
        shipped.save(args.out, first=keys)
        print(f"wrote {args.out}: {len(shipped)} vectors, {args.out.stat().st_size / 1e6:.2f} MB, "
              f"model {model}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
