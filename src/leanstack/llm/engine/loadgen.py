"""An open-loop load generator for OpenAI-compatible servers (like vLLM's serving benchmark).

Requests arrive as a Poisson process whatever the server's speed (open loop), each a streaming
``/v1/completions`` call with a token-id prompt and a fixed output length (``ignore_eos``);
the server's ``/health`` is polled for the peak number of running sequences. Used by
``leanstack llm bench-serve`` and ``benchmarks/llm_serving.py``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

HEALTH_POLL_S = 0.2


def request_set(kind: str, n: int, seed: int, vocab: int = 49152, long_min: int = 384,
                long_max: int = 640) -> list[tuple[list[int], int]]:
    """(prompt ids, output tokens) pairs. ``synthetic``: prompts lognormal around 96 tokens
    (16..512), outputs 16..64; ``long``: prompts ``long_min..long_max`` tokens, 96 output
    tokens."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        if kind == "synthetic":
            plen = int(np.clip(rng.lognormal(np.log(96), 0.6), 16, 512))
            olen = int(rng.integers(16, 65))
        else:
            plen, olen = int(rng.integers(long_min, long_max + 1)), 96
        out.append((rng.integers(100, vocab - 100, plen).tolist(), olen))
    return out


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


async def _one(client: Any, url: str, prompt: list[int], max_tokens: int, delay: float,
               records: list[dict[str, float]]) -> None:
    await asyncio.sleep(delay)
    start = time.perf_counter()
    first = last = None
    body = {"model": "default", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": True}
    async with client.stream("POST", url + "/v1/completions", json=body) as resp:
        if resp.status_code != 200:
            records.append({"error": resp.status_code})
            return
        async for line in resp.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                last = time.perf_counter()
                first = first or last
    records.append({"start": start, "end": last, "ttft": first - start,
                    "tpot": (last - first) / max(max_tokens - 1, 1), "out": max_tokens})


async def drive(url: str, reqs: list[tuple[list[int], int]], rate: float,
                seed: int = 0) -> dict[str, Any]:
    """Send ``reqs`` to the server at ``url`` at ``rate`` requests/s (Poisson); summarize."""
    import httpx

    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, len(reqs)))
    records: list[dict[str, float]] = []
    peak = {"running": 0, "kv_bytes_used": 0, "kv_working_set_bytes": 0}
    async with httpx.AsyncClient(timeout=None) as client:
        tasks = [asyncio.create_task(_one(client, url, p, o, float(t), records))
                 for (p, o), t in zip(reqs, arrivals, strict=True)]
        while not all(t.done() for t in tasks):
            now = (await client.get(url + "/health")).json()
            peak = {k: max(v, now.get(k, 0)) for k, v in peak.items()}
            await asyncio.sleep(HEALTH_POLL_S)
        await asyncio.gather(*tasks)
        health = (await client.get(url + "/health")).json()
    ok = [r for r in records if "error" not in r]
    span = max(r["end"] for r in ok) - min(r["start"] for r in ok) if ok else float("nan")
    return {
        "requests": len(reqs), "errors": len(records) - len(ok), "duration_s": round(span, 2),
        "requests_per_s": len(ok) / span, "output_tokens_per_s": sum(r["out"] for r in ok) / span,
        "ttft_p50_s": _percentile([r["ttft"] for r in ok], 50),
        "ttft_p99_s": _percentile([r["ttft"] for r in ok], 99),
        "tpot_p50_s": _percentile([r["tpot"] for r in ok], 50),
        "tpot_p99_s": _percentile([r["tpot"] for r in ok], 99),
        "peak_running": peak["running"], "peak_kv_bytes_used": peak["kv_bytes_used"],
        "peak_working_set_bytes": peak["kv_working_set_bytes"],
        "preemptions": health["preemptions"],
        "kv_pages_free_after": health["kv_pages_free"], "kv_pages_total": health["kv_pages_total"],
    }
