"""Do the spans the workers send over OTLP/HTTP match the spans they write to their files?

A shipped app runs on the local backend (real processes under cgroup limits, root) under
diurnal open-loop load, with every worker's ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` pointing at an
:class:`~leanstack.microservices.otlp.OtlpReceiver` — the receiver the Kubernetes backend runs
for ``spans()``. After the run the spans that ended before a cutoff (one second before the last
read, so both sources are complete) are compared per tier: counts, p50 and p99 of span latency
and of own latency, and how many span ids differ.

Run: ``nice -n 10 .venv/bin/python benchmarks/otlp_spans.py [--app A --rps R --duration S]``;
writes ``benchmarks/results/otlp_spans.json``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from leanstack.atomic import write_json
from leanstack.microservices.app import load_app
from leanstack.microservices.load import LoadSpec
from leanstack.microservices.local import LocalBackend
from leanstack.microservices.observation import Allocation, own_latencies_ms, percentiles_ms
from leanstack.microservices.otlp import ENDPOINT_ENV, OtlpReceiver
from leanstack.microservices.result import environment

RESULTS = Path(__file__).parent / "results" / "otlp_spans.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--app", default="hotel-reservation")
    p.add_argument("--rps", type=float, default=60.0)
    p.add_argument("--duration", type=float, default=30.0)
    a = p.parse_args()
    t0 = time.monotonic()
    load_before = os.getloadavg()
    app = load_app(a.app)
    receiver = OtlpReceiver("127.0.0.1", 0)
    os.environ[ENDPOINT_ENV] = receiver.url  # the workers inherit it
    backend = LocalBackend(interval_s=5.0)
    try:
        backend.deploy(app, Allocation.static_max(app))
        start_ns = time.time_ns()
        backend.start(LoadSpec("diurnal", a.rps, a.duration, seed=1))
        for _ in range(round(a.duration / backend.interval_s)):
            backend.observe()
        cutoff = time.time_ns() - 1_000_000_000
        time.sleep(1.0)
        files = [s for s in backend.spans(start_ns) if s.end_ns < cutoff]
        received = [s for s in receiver.spans(start_ns) if s.end_ns < cutoff]
    finally:
        backend.close()
        receiver.close()
    own_f, own_r = own_latencies_ms(files), own_latencies_ms(received)
    tiers = {}
    for tier in app.services:
        f = [s.duration_ms for s in files if s.service == tier]
        r = [s.duration_ms for s in received if s.service == tier]
        tiers[tier] = {"files": len(f), "otlp": len(r),
                       "latency_files_ms": percentiles_ms(f), "latency_otlp_ms": percentiles_ms(r),
                       "own_files_ms": percentiles_ms(own_f.get(tier, [])),
                       "own_otlp_ms": percentiles_ms(own_r.get(tier, []))}
    ids_f, ids_r = {s.span_id for s in files}, {s.span_id for s in received}
    result = {
        "benchmark": "otlp_spans", "app": a.app, "rps": a.rps, "duration_s": a.duration,
        "spans_files": len(files), "spans_otlp": len(received),
        "only_in_files": len(ids_f - ids_r), "only_in_otlp": len(ids_r - ids_f),
        "tiers": tiers, "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg()),
        "environment": environment(time.monotonic() - t0),
    }
    write_json(RESULTS, result)
    print("| tier | spans (files) | spans (OTLP) | p50 ms files / OTLP | p99 ms files / OTLP |")
    print("|---|---|---|---|---|")
    for tier, r in tiers.items():
        lf, lo = r["latency_files_ms"], r["latency_otlp_ms"]
        print(f"| {tier} | {r['files']} | {r['otlp']} | {lf.get('p50', 0):.2f} / "
              f"{lo.get('p50', 0):.2f} | {lf.get('p99', 0):.2f} / {lo.get('p99', 0):.2f} |")
    print(f"\n{len(files)} spans from files, {len(received)} over OTLP; only in files "
          f"{result['only_in_files']}, only over OTLP {result['only_in_otlp']}; wrote {RESULTS}")


if __name__ == "__main__":
    main()
