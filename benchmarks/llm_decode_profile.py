"""Where a decode step of the engine spends its time: fp16 pages vs LeanKV formats.

For each format, ``--batch`` sequences with ``--context``-token prompts are prefilled, then
``--steps`` decode steps are timed; the time inside ``KVManager.read`` (gathering the context's
records from the pages and decoding them to floats) and ``KVManager.write`` is measured
separately from the rest of the step (projections, MLPs, attention math, sampling). Answers
"is attention over compressed pages the limit, and by how much". Writes
benchmarks/results/llm_decode_profile.json.
Example: ``nice -n 10 python benchmarks/llm_decode_profile.py --threads 1``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path

import torch

from leanstack.atomic import write_json
from leanstack.llm import load_model
from leanstack.llm.engine import Engine, EngineConfig, SamplingParams

RESULTS = Path(__file__).parent / "results"


class Timed:
    """Wraps a ``KVManager`` method and sums the seconds spent in it."""

    def __init__(self, fn):
        self.fn, self.seconds = fn, 0.0

    def __call__(self, *args, **kwargs):
        t = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t


def profile(loaded, fmt: str, batch: int, context: int, steps: int) -> dict:
    engine = Engine(loaded, EngineConfig(kv_budget_bytes=1 << 30, kv_format=fmt,
                                         max_num_seqs=batch, max_batched_tokens=2048))
    gen = torch.Generator().manual_seed(0)
    for _ in range(batch):
        prompt = torch.randint(100, 40000, (context,), generator=gen).tolist()
        engine.add_request(prompt, SamplingParams(max_tokens=steps + 2, ignore_eos=True))
    while any(s.num_computed < len(s.prompt_ids) for s in engine.sequences.values()):
        engine.step()
    read, write = Timed(engine.kv.read), Timed(engine.kv.write)
    engine.kv.read, engine.kv.write = read, write
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - t)
    total = sum(times)
    return {"format": fmt, "bytes_per_token": engine.kv.bytes_per_token(fmt),
            "step_ms_median": 1000 * statistics.median(times),
            "read_share": read.seconds / total, "write_share": write.seconds / total,
            "read_ms_per_step": 1000 * read.seconds / steps,
            "rest_ms_per_step": 1000 * (total - read.seconds - write.seconds) / steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--formats", default="fp16,lossless,balanced")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=RESULTS / "llm_decode_profile.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model()
    rows = []
    for fmt in args.formats.split(","):
        rows.append(profile(loaded, fmt, args.batch, args.context, args.steps))
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in rows[-1].items()},
              flush=True)
    write_json(args.out, {
        "benchmark": "llm_decode_profile", "batch": args.batch, "context": args.context,
        "steps": args.steps, "rows": rows,
        "environment": {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                        "torch_threads": args.threads,
                        "packages": {p: metadata.version(p) for p in ("torch", "transformers")},
                        "command": "python benchmarks/llm_decode_profile.py "
                                   + " ".join(sys.argv[1:])}})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
