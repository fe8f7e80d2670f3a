"""Observations through a REAL Prometheus (the Debian binary) scraping the local backend's
workers agree with the local backend's direct observations; the k8s backend's observe path
reads the same metrics (its API server is the FAKE of k8s_fake.py)."""

import shutil
import time
import tomllib

import numpy as np
import pytest
from tests._require import require

from leanstack.errors import LeanstackError
from leanstack.microservices.app import parse_app
from leanstack.microservices.load import LoadSpec
from leanstack.microservices.local import LocalBackend
from leanstack.microservices.observation import Allocation
from leanstack.microservices.prometheus import (
    PrometheusClient,
    PrometheusObserver,
    PrometheusServer,
    local_targets,
    percentiles_from_buckets,
)
from leanstack.microservices.runner import make_backend

from .helpers import LOCAL_HOW, local_missing
from .k8s_fake import FakeApiServer

TINY = """
name = "tiny"
[services.front.endpoints.get]
work = "json"
cpu_ms = 0.3
calls = [["back.get", "cache.get"]]
[services.back]
replicas = 2
[services.back.endpoints.get]
work = "hash"
cpu_ms = 0.3
calls = [["store.set"], ["store.get"]]
[services.store]
kind = "redis"
[services.cache]
kind = "memcached"
[classes.read]
entry = "front.get"
weight = 1
sla = { percentile = 99, ms = 50 }
"""
SCRAPE_S = 0.25


def test_percentiles_from_buckets_interpolate_like_histogram_quantile():
    rng = np.random.default_rng(1)
    values = rng.uniform(0.0, 0.1, 20000)  # seconds, uniform: interpolation is exact-ish
    les = [0.01 * k for k in range(1, 11)]
    cum = {f"{le:g}": float((values <= le).sum()) for le in les}
    cum["+Inf"] = float(len(values))
    got = percentiles_from_buckets(cum)
    want = np.percentile(values, [50, 90, 99]) * 1e3
    assert np.allclose([got["p50"], got["p90"], got["p99"]], want, rtol=0.02)
    assert percentiles_from_buckets({"+Inf": 0.0}) == {}
    # everything above the last finite bound: the bound, as histogram_quantile answers
    assert percentiles_from_buckets({"0.1": 0.0, "+Inf": 5.0})["p50"] == pytest.approx(100.0)


def test_unreachable_prometheus_is_one_line():
    with pytest.raises(LeanstackError, match="cannot query Prometheus"):
        PrometheusClient("http://127.0.0.1:9", timeout_s=1).query("up", time.time())


@pytest.fixture(scope="module")
def local_run():
    require(local_missing(), LOCAL_HOW)
    require(shutil.which("prometheus") is None and "prometheus",
            "run scripts/system-deps.sh (Debian package 'prometheus')")
    app = parse_app(tomllib.loads(TINY))
    backend = LocalBackend(interval_s=2.0)
    prom = PrometheusServer(scrape_s=SCRAPE_S, labels={"namespace": "leanstack"})
    try:
        backend.deploy(app, Allocation.static_max(app))
        prom.start(local_targets(backend))
        prom.wait_for_targets(3)
        # the load outlasts the five observed intervals: a late observe() on a slow machine
        # must not stretch the last window past the load's end (it read 7% low that way)
        backend.start(LoadSpec("constant", 150, 12.0, seed=3))
        rows, t_prev = [], time.time()
        for _ in range(5):
            obs = backend.observe()
            t = time.time()
            rows.append((t_prev, t, obs))
            t_prev = t
        time.sleep(2 * SCRAPE_S)
        yield app, prom, rows
    finally:
        prom.stop()
        backend.close()


@pytest.mark.cgroups
def test_prometheus_rates_agree_with_direct_observation_within_5_percent(local_run):
    app, prom, rows = local_run
    observer = PrometheusObserver(PrometheusClient(prom.url), app)
    # the first interval's direct window also spans the load generator's start-up: skip it
    rows = rows[1:]
    windows = [observer.window(t0, t1) for t0, t1, _ in rows]
    for tier in app.services:
        direct = np.mean([o.tiers[tier].rps for _, _, o in rows])
        via_prom = np.mean([w.tiers[tier].rps for w in windows])
        assert direct > 100
        assert via_prom == pytest.approx(direct, rel=0.05), tier
        # each interval: off by at most the requests of one scrape interval at either end
        for w, (t0, t1, o) in zip(windows, rows, strict=True):
            slack = 2 * SCRAPE_S * o.tiers[tier].rps + 5
            assert abs(w.tiers[tier].rps - o.tiers[tier].rps) * (t1 - t0) <= slack, tier
    served = np.mean([o.classes["read"].throughput_rps for _, _, o in rows])
    via_prom = np.mean([w.classes["read"].throughput_rps for w in windows])
    assert via_prom == pytest.approx(served, rel=0.05)
    assert windows[-1].tiers["back"].replicas == 2
    # server-side latency of the entry tier: the same spans' p50 within a bucket width (25%)
    direct_p50 = np.median([o.tiers["front"].latency_ms["p50"] for _, _, o in rows])
    prom_p50 = np.median([w.tiers["front"].latency_ms["p50"] for w in windows])
    assert prom_p50 == pytest.approx(direct_p50, rel=0.3)


@pytest.mark.cgroups
def test_k8s_backend_observes_through_prometheus(local_run, monkeypatch):
    """The k8s backend's observe path (fake API, real Prometheus over real workers)."""
    app, prom, rows = local_run
    with FakeApiServer("1.33") as fake:
        b = make_backend("k8s", 2.0, api_url=fake.url, prometheus=prom.url, scrape_s=SCRAPE_S,
                         ready_timeout_s=5.0)
        b.deploy(app, Allocation.static_max(app))
        b.start()
        b._t0 = b._last_end = rows[1][0]  # replay the local run's second window
        monkeypatch.setattr(time, "sleep", lambda s: None)
        obs = b.observe()
        b.close()
    local = rows[1][2]
    assert obs.interval_s == 2.0
    assert obs.tiers["front"].rps == pytest.approx(local.tiers["front"].rps, rel=0.3)
    assert obs.tiers["front"].cpu_limit == Allocation.static_max(app).tiers["front"].cpu
    assert obs.classes["read"].completed > 0
    assert fake.objects == {}
