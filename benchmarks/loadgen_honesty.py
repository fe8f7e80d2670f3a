"""Is the load generator honest? Rate held, latency measured right, stalls not hidden.

1. Achieved vs target rate (constant pattern) at several rates, as the server sees the arrivals.
2. Against a server with a fixed 20 ms delay: the reported p50 / p99 (goal: within 2 ms of 20).
3. A 1 s server stall, with vs without, for our open-loop generator and for the baseline every
   closed-loop tool implements (a few connections, each sends its next request only after the
   previous response, latency timed from the actual send): the baseline hides the stall
   (coordinated omission), ours must not.

Run: ``.venv/bin/python benchmarks/loadgen_honesty.py [--quick]``; writes
``benchmarks/results/loadgen_honesty.json`` and prints Markdown tables. The server is a separate
aiohttp process started by this script.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from hdrh.histogram import HdrHistogram

from leanstack.atomic import write_json
from leanstack.microservices.app import SLA
from leanstack.microservices.load import LoadSpec
from leanstack.microservices.loadgen import LoadGenerator
from leanstack.provenance import benchmark_record

RESULTS = Path(__file__).parent / "results" / "loadgen_honesty.json"
RATES = (100, 250, 500, 750, 1000)
PCTS = (50.0, 90.0, 99.0, 99.9)


# --- the server (runs in its own process: `loadgen_honesty.py --serve`) ---------------------

def serve() -> None:
    """POST / answers after the configured delay (or the stall); GET /stats returns arrivals."""
    from aiohttp import web

    state = {"delay_s": 0.0, "stall_until": 0.0, "arrivals": [], "held_ms": []}

    async def work(request: web.Request) -> web.Response:
        t0 = time.monotonic()
        state["arrivals"].append(t0)
        await request.read()
        wait = max(state["delay_s"], state["stall_until"] - time.monotonic())
        if wait > 0:
            await asyncio.sleep(wait)
        # what the server really held the request (its timer overshoots the asked delay)
        state["held_ms"].append((time.monotonic() - t0) * 1000)
        return web.Response(text="ok")

    async def control(request: web.Request) -> web.Response:
        q = request.query
        if "delay_ms" in q:
            state["delay_s"] = float(q["delay_ms"]) / 1000
        if "stall_s" in q:
            state["stall_until"] = time.monotonic() + float(q["stall_s"])
        if "reset" in q:
            state["arrivals"], state["held_ms"] = [], []
        return web.json_response({"arrivals": state["arrivals"], "held_ms": state["held_ms"]})

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/", work)
        app.router.add_get("/control", control)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
        await site.start()
        print(site._server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


class ServerProcess:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve"],
                                     stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline())
        self.url = f"http://127.0.0.1:{self.port}/"

    def control(self, **params: float) -> dict[str, list[float]]:
        """Change the server's settings; returns its arrival times and real hold times (ms)."""
        query = "&".join(f"{k}={v}" for k, v in params.items())
        with urllib.request.urlopen(f"{self.url}control?{query}", timeout=30) as r:
            return json.loads(r.read())

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


# --- one run of our generator ----------------------------------------------------------------

def run_ours(server: ServerProcess, rps: float, duration_s: float,
             stall_at_s: float | None = None) -> dict:
    """Run the load generator; returns whole-run percentiles, errors, worst-interval p99."""
    load = LoadSpec("constant", rps=rps, duration_s=duration_s)
    scheduled = len(load.arrival_times())
    server.control(reset=1)
    gen = LoadGenerator({"a": server.url}, load, {"a": 1.0}, {"a": SLA(99, 100)},
                        interval_s=0.5, timeout_s=10)
    worst_p99 = worst_lag = 0.0
    with gen:
        while True:
            r = gen.next_interval(timeout_s=30)
            if stall_at_s is not None and r.t_end >= stall_at_s:
                server.control(stall_s=1.0)
                stall_at_s = None
            worst_p99 = max(worst_p99, r.classes["a"].latency_ms["p99"])
            worst_lag = max(worst_lag, r.send_lag_p99_ms)
            tot = gen.totals()["a"]
            if r.t_end >= duration_s and tot.completed + tot.errors >= scheduled:
                break
    tot = gen.totals()["a"]
    seen = server.control()
    held = np.array(seen["held_ms"] or [0.0])
    return {"scheduled": scheduled, "completed": tot.completed, "errors": tot.errors,
            "latency_ms": tot.latency_ms, "worst_interval_p99_ms": worst_p99,
            "worst_interval_send_lag_p99_ms": worst_lag,
            "server_held_ms": {"p50": float(np.percentile(held, 50)),
                               "p99": float(np.percentile(held, 99))},
            **arrival_stats(seen["arrivals"], rps)}


def arrival_stats(arrivals: list[float], rps: float) -> dict:
    """Achieved rate and send lateness as the server saw them (constant schedule).

    The rate is the slope of a least-squares line through (arrival index, arrival time), so one
    late first or last request does not skew it; lateness is measured against the best-fitting
    on-time schedule ``t0 + i / rps`` with the earliest ``t0`` that no arrival beats.
    """
    a = np.sort(np.asarray(arrivals))
    if a.size < 2:
        return {"achieved_rps": 0.0, "server_lateness_p99_ms": 0.0}
    i = np.arange(a.size)
    slope = np.polyfit(i, a, 1)[0]
    offset = a - i / rps
    lateness_ms = (offset - offset.min()) * 1000
    return {"achieved_rps": float(1 / slope),
            "server_lateness_p50_ms": float(np.percentile(lateness_ms, 50)),
            "server_lateness_p99_ms": float(np.percentile(lateness_ms, 99))}


# --- the closed-loop baseline ----------------------------------------------------------------

async def _closed_loop(url: str, rps: float, duration_s: float, connections: int,
                       stall: tuple[ServerProcess, float] | None) -> HdrHistogram:
    import aiohttp

    hist = HdrHistogram(1, 3600 * 10**6, 3)
    gap = connections / rps
    start = time.monotonic()

    async def worker(session: aiohttp.ClientSession, offset: float) -> None:
        nxt = start + offset
        while nxt < start + duration_s:
            await asyncio.sleep(max(nxt - time.monotonic(), 0))
            sent = time.monotonic()
            async with session.post(url, data=b"{}") as resp:
                await resp.read()
            hist.record_value(max(int((time.monotonic() - sent) * 1e6), 1))
            nxt = max(nxt + gap, time.monotonic())  # late? send at once, the backlog is lost

    async def staller() -> None:
        server, at = stall
        await asyncio.sleep(at)
        await asyncio.to_thread(server.control, stall_s=1.0)

    async with aiohttp.ClientSession() as session:
        jobs = [worker(session, i * gap / connections) for i in range(connections)]
        if stall:
            jobs.append(staller())
        await asyncio.gather(*jobs)
    return hist


def run_baseline(server: ServerProcess, rps: float, duration_s: float,
                 stall_at_s: float | None = None, connections: int = 10) -> dict:
    server.control(reset=1)
    stall = (server, stall_at_s) if stall_at_s is not None else None
    hist = asyncio.run(_closed_loop(server.url, rps, duration_s, connections, stall))
    return {"completed": hist.get_total_count(),
            "latency_ms": {f"p{p:g}": hist.get_value_at_percentile(p) / 1000 for p in PCTS}}


# --- the benchmark ---------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short runs (about a minute)")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve()
        return
    duration = 3.0 if args.quick else 10.0
    repeats = 1 if args.quick else 3
    server = ServerProcess()
    try:
        rates = [run_ours(server, r, duration) | {"target_rps": r} for r in RATES]
        server.control(delay_ms=20)
        delay = [run_ours(server, r, duration) | {"target_rps": r} for r in (100, 250)]
        server.control(delay_ms=0)
        stall_runs: dict[str, list[dict]] = {k: [] for k in
                                             ("ours", "ours_stall", "closed", "closed_stall")}
        for _ in range(repeats):  # alternate ours and the baseline
            stall_runs["ours"].append(run_ours(server, 200, 5.0))
            stall_runs["closed"].append(run_baseline(server, 200, 5.0))
            stall_runs["ours_stall"].append(run_ours(server, 200, 5.0, stall_at_s=2.0))
            stall_runs["closed_stall"].append(run_baseline(server, 200, 5.0, stall_at_s=2.0))
    finally:
        server.close()
    stall = {k: {p: statistics.median(r["latency_ms"][p] for r in runs)
                 for p in ("p50", "p90", "p99", "p99.9")} for k, runs in stall_runs.items()}
    result = {
        "benchmark": "loadgen_honesty",
        **benchmark_record(("leanstack", "aiohttp", "hdrhistogram", "numpy")),
        "duration_s": duration, "repeats_stall": repeats,
        "rate": rates, "fixed_delay_20ms": delay, "stall_1s": stall, "stall_runs": stall_runs,
    }
    write_json(RESULTS, result, indent=2)
    print_tables(result)


def print_tables(res: dict) -> None:
    cpus = res["environment"]["cpu_count"]
    print(f"\n`{res['command']}` on {cpus} CPUs, {res['duration_s']:g} s runs\n")
    print("| target rps | achieved rps (server) | deviation | errors | send lag p99 ms "
          "(generator, worst interval) | arrival lateness p99 ms (server) | latency p50 ms | "
          "latency p99 ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in res["rate"]:
        dev = (r["achieved_rps"] / r["target_rps"] - 1) * 100
        print(f"| {r['target_rps']} | {r['achieved_rps']:.1f} | {dev:+.2f}% | {r['errors']} | "
              f"{r['worst_interval_send_lag_p99_ms']:.2f} | {r['server_lateness_p99_ms']:.2f} | "
              f"{r['latency_ms']['p50']:.2f} | {r['latency_ms']['p99']:.2f} |")
    print("\n| server delay 20 ms, rps | reported p50 / p99 ms | vs 20 ms | server really held "
          "p50 / p99 ms | reported minus held |")
    print("|---:|---:|---:|---:|---:|")
    for r in res["fixed_delay_20ms"]:
        p50, p99 = r["latency_ms"]["p50"], r["latency_ms"]["p99"]
        h50, h99 = r["server_held_ms"]["p50"], r["server_held_ms"]["p99"]
        print(f"| {r['target_rps']} | {p50:.2f} / {p99:.2f} | {p50 - 20:+.2f} / {p99 - 20:+.2f} "
              f"| {h50:.2f} / {h99:.2f} | {p50 - h50:+.2f} / {p99 - h99:+.2f} |")
    names = {"ours": "ours (open loop), no stall", "ours_stall": "ours (open loop), 1 s stall",
             "closed": "closed loop, 10 conns, no stall",
             "closed_stall": "closed loop, 10 conns, 1 s stall"}
    print(f"\n| 200 rps, 5 s (median of {res['repeats_stall']}) | p50 ms | p90 ms | p99 ms | "
          "p99.9 ms |")
    print("|---|---:|---:|---:|---:|")
    for k, label in names.items():
        s = res["stall_1s"][k]
        print(f"| {label} | {s['p50']:.1f} | {s['p90']:.1f} | {s['p99']:.1f} | "
              f"{s['p99.9']:.1f} |")


if __name__ == "__main__":
    main()
