"""Where ``chip corpus build`` spends its time, and whether float16 embedding caches change
retrieval.

Parts:

* profile: reading and chunking each default source, de-duplication, BM25, loading the
  encoder, and embedding ``--chunks`` random chunks (extrapolated to the whole corpus), with
  the token-length distribution of the chunks (how many the model's 256-token limit cuts);
* float16: the chunk-level question set (both halves; nothing is tuned here) searched by the
  fused, re-ranked and dense methods over the knowledge base's chunk vectors as float32 and
  rounded to float16 (how the embedding caches store them): recall and how many questions get
  a different top 3.

Run: ``nice -n 10 .venv/bin/python benchmarks/chip_corpus_build.py --chunks 256``. Needs the
knowledge base (``leanstack chip corpus build``) for the float16 part. Writes
``benchmarks/results/chip_corpus_build.json``.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "chip_corpus_build.json"


def profile(sample: int) -> dict:
    """Seconds of each step of a build into an empty directory, embedding only ``sample``
    chunks."""
    from leanstack.chipexpert import dense
    from leanstack.chipexpert.bm25 import BM25Index
    from leanstack.chipexpert.chunking import heading_paths
    from leanstack.chipexpert.corpus import SourceReport, build_corpus, load_corpus
    from leanstack.chipexpert.retrieval import bm25_text, index_text
    from leanstack.chipexpert.sources import default_sources

    out = Path(tempfile.mkdtemp(prefix="chip-build-profile-"))
    try:
        reads: dict[str, float] = {}
        last = [time.perf_counter()]

        def source_done(rep: SourceReport) -> None:
            now = time.perf_counter()
            reads[rep.name] = round(now - last[0], 3)
            last[0] = now

        t0 = time.perf_counter()
        build_corpus(out, default_sources(), on_source=source_done)
        dedup_s = time.perf_counter() - last[0]
        corpus_s = time.perf_counter() - t0
        chunks = load_corpus(out)
        paths = heading_paths(chunks)
        texts = [index_text(c, paths[(c.source, c.section)]) for c in chunks]
        t0 = time.perf_counter()
        BM25Index.build([bm25_text(c) for c in chunks])
        bm25_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        model = dense.load_model()
        load_s = time.perf_counter() - t0
        lengths = np.array([len(ids) for ids in model.tokenizer(texts)["input_ids"]])
        picked = random.Random(0).sample(texts, min(sample, len(texts)))
        t0 = time.perf_counter()
        dense.embed(model, picked)
        embed_s = time.perf_counter() - t0
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {"chunks": len(chunks), "read_s_per_source": reads,
            "read_s": round(sum(reads.values()), 2), "dedup_s": round(dedup_s, 2),
            "corpus_s": round(corpus_s, 2), "bm25_s": round(bm25_s, 2),
            "load_encoder_s": round(load_s, 2), "embedded_sample": len(picked),
            "embed_sample_s": round(embed_s, 2),
            "embed_all_extrapolated_s": round(embed_s / len(picked) * len(chunks), 1),
            "word_pieces": {"mean": round(float(lengths.mean()), 1),
                            "p50": float(np.percentile(lengths, 50)),
                            "p90": float(np.percentile(lengths, 90)),
                            "max": int(lengths.max()),
                            "share_over_256": round(float((lengths > 256).mean()), 4),
                            "share_over_128": round(float((lengths > 128).mean()), 4)},
            "torch_threads": _torch_threads()}


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def float16(kb: Path | None) -> dict:
    """Chunk-level recall with the chunk vectors as float32 and rounded to float16."""
    from leanstack.chipexpert.assistant import load_retriever
    from leanstack.chipexpert.chunk_eval import evaluate, load_questions
    from leanstack.chipexpert.embedding_cache import as_stored

    retriever = load_retriever(kb)
    items = load_questions()
    as_built = retriever.dense.vectors.copy()
    variants = {"float32": as_built.astype(np.float32), "float16": as_stored(as_built)}
    out: dict = {"questions": len(items),
                 "max_abs_difference": float(np.abs(variants["float32"] -
                                                    variants["float16"]).max())}
    for method in ("fused", "reranked", "dense"):
        if method == "reranked" and retriever.reranker is None:
            continue
        tops, scores = {}, {}
        for name, vectors in variants.items():
            retriever.dense.vectors = vectors

            def rank(q: str, method: str = method) -> list[str]:
                return [h.id for h in retriever.search(q, k=10, method=method)]

            tops[name] = [rank(item.question) for item in items]
            scores[name] = {key: value for key, value in evaluate(rank, items).items()
                            if isinstance(value, float)}
        out[method] = {**scores, "top3_differs": sum(
            a[:3] != b[:3] for a, b in zip(tops["float32"], tops["float16"], strict=True))}
    retriever.dense.vectors = as_built
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chunks", type=int, default=256, help="chunks embedded by the profile")
    p.add_argument("--dir", type=Path, default=None, help="knowledge base for the float16 part")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    from leanstack.chipexpert.store import write_json
    from leanstack.provenance import benchmark_record

    load_before = round(os.getloadavg()[0], 2)
    result = {"benchmark": "chip_corpus_build", "profile": profile(args.chunks),
              "float16": float16(args.dir), "load_before": load_before,
              "load_after": round(os.getloadavg()[0], 2),
              **benchmark_record(("leanstack", "torch", "transformers", "numpy"))}
    write_json(args.out, result)
    prof = result["profile"]
    print(f"load {load_before}-{result['load_after']} on {os.cpu_count()} CPUs")
    print(f"read {prof['read_s']} s, de-duplicate {prof['dedup_s']} s, BM25 {prof['bm25_s']} s, "
          f"load encoder {prof['load_encoder_s']} s, embed {prof['embedded_sample']} chunks "
          f"{prof['embed_sample_s']} s (all {prof['chunks']}: ~"
          f"{prof['embed_all_extrapolated_s']} s)")
    for method in ("fused", "reranked", "dense"):
        if method in result["float16"]:
            row = result["float16"][method]
            print(f"{method}: recall@3 float32 {row['float32']['recall_at_3']:.3f}, float16 "
                  f"{row['float16']['recall_at_3']:.3f}, top 3 differs for "
                  f"{row['top3_differs']} questions")


if __name__ == "__main__":
    main()
