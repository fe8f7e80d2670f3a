"""Does observing through a real Prometheus agree with the local backend's direct observation?

A shipped app runs on the local backend (real processes under cgroup limits, root) under
diurnal open-loop load; a private Prometheus (the Debian binary) scrapes every worker's
``/metrics``. Each control interval the direct observation (workers' ``/stats``, storage servers'
own counters, spans) is compared with :class:`PrometheusObserver`'s window read back from
Prometheus' HTTP API: tier rates (logic tiers: requests served; storage tiers: operations, as the
workers count their calls vs the servers' own counts), the entry class's completed requests and the
tiers' p50/p99 latency. The first interval (whose direct window includes the load generator's
start-up) is left out.

Run: ``nice -n 10 .venv/bin/python benchmarks/prometheus_agreement.py [--app A --rps R
--duration S --interval S --scrape S]``; writes ``benchmarks/results/prometheus_agreement.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from leanstack.atomic import write_json
from leanstack.microservices.app import load_app
from leanstack.microservices.load import LoadSpec
from leanstack.microservices.local import LocalBackend
from leanstack.microservices.observation import Allocation
from leanstack.microservices.prometheus import (
    PrometheusClient,
    PrometheusObserver,
    PrometheusServer,
    local_targets,
)
from leanstack.microservices.result import environment

RESULTS = Path(__file__).parent / "results" / "prometheus_agreement.json"


def rel(a: float, b: float) -> float:
    return abs(a - b) / b if b else 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--app", default="hotel-reservation")
    p.add_argument("--rps", type=float, default=60.0)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--interval", type=float, default=5.0)
    p.add_argument("--scrape", type=float, default=1.0)
    a = p.parse_args()
    t0 = time.monotonic()
    app = load_app(a.app)
    backend = LocalBackend(interval_s=a.interval)
    prom = PrometheusServer(scrape_s=a.scrape)
    rows = []
    try:
        backend.deploy(app, Allocation.static_max(app))
        targets = local_targets(backend)
        prom.start(targets)
        prom.wait_for_targets(sum(len(v) for v in targets.values()), timeout_s=30)
        backend.start(LoadSpec("diurnal", a.rps, a.duration, seed=7, amplitude=0.5,
                               period_s=a.duration))
        t_prev = time.time()
        for _ in range(round(a.duration / a.interval)):
            obs = backend.observe()
            t = time.time()
            rows.append((t_prev, t, obs))
            t_prev = t
        time.sleep(2 * a.scrape)
        observer = PrometheusObserver(PrometheusClient(prom.url), app)
        windows = [observer.window(t0_, t1) for t0_, t1, _ in rows]
    finally:
        prom.stop()
        backend.close()
    rows, windows = rows[1:], windows[1:]
    tiers = {}
    for name, svc in app.services.items():
        direct = [o.tiers[name].rps for _, _, o in rows]
        via = [w.tiers[name].rps for w in windows]
        per = [rel(v, d) for v, d in zip(via, direct, strict=True) if d > 0]
        # within one scrape interval: the count difference is at most the requests of one
        # scrape interval at each end of the window
        within = [abs(v - d) * (t1 - t0_) <= 2 * a.scrape * d + 2
                  for v, d, (t0_, t1, _) in zip(via, direct, rows, strict=True)]
        tiers[name] = {
            "kind": svc.kind, "mean_rps_direct": float(np.mean(direct)),
            "mean_rps_prometheus": float(np.mean(via)),
            "run_rel_error": rel(float(np.mean(via)), float(np.mean(direct))),
            "interval_rel_error_median": float(np.median(per)) if per else None,
            "interval_rel_error_max": float(np.max(per)) if per else None,
            "intervals_within_one_scrape": f"{sum(within)}/{len(within)}",
        }
        if not svc.is_storage:
            for q in ("p50", "p99"):
                d = [o.tiers[name].latency_ms.get(q) for _, _, o in rows]
                v = [w.tiers[name].latency_ms.get(q) for w in windows]
                pairs = [(x, y) for x, y in zip(v, d, strict=True) if x and y]
                tiers[name][f"{q}_rel_error_median"] = (
                    float(np.median([rel(x, y) for x, y in pairs])) if pairs else None)
    classes = {}
    for cname in app.classes:
        d = sum(o.classes[cname].completed for _, _, o in rows)
        v = sum(w.classes[cname].completed for w in windows)
        classes[cname] = {"completed_direct": d, "completed_prometheus": v,
                          "rel_error": rel(v, d)}
    run_errors = [t["run_rel_error"] for t in tiers.values()]
    data = {
        "app": a.app, "load": {"pattern": "diurnal", "rps": a.rps, "duration_s": a.duration,
                               "amplitude": 0.5},
        "interval_s": a.interval, "scrape_s": a.scrape, "intervals_compared": len(rows),
        "summary": {"tiers": len(tiers), "max_run_rel_error": max(run_errors),
                    "tiers_within_5pct": sum(e <= 0.05 for e in run_errors),
                    "max_class_rel_error": max(c["rel_error"] for c in classes.values())},
        "tiers": tiers, "classes": classes,
        "environment": environment(time.monotonic() - t0),
    }
    write_json(RESULTS, data)
    print("| tier | kind | direct req/s | Prometheus req/s | run error | interval error "
          "(median / max) | within one scrape |")
    print("|---|---|---|---|---|---|---|")
    for name, t in tiers.items():
        med, mx = t["interval_rel_error_median"], t["interval_rel_error_max"]
        print(f"| {name} | {t['kind']} | {t['mean_rps_direct']:.1f} | "
              f"{t['mean_rps_prometheus']:.1f} | {t['run_rel_error']:.1%} | "
              f"{med:.1%} / {mx:.1%} | {t['intervals_within_one_scrape']} |")
    print(data["summary"], classes)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
