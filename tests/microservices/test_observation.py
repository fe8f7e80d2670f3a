"""Observation types: SLA verdicts, allocations and the OTLP span format."""

from __future__ import annotations

import json

import pytest

from leanstack.microservices.app import load_app
from leanstack.microservices.observation import Allocation, ClassStats, Span, own_latencies_ms


def test_failed_requests_count_against_the_sla():
    ok = ClassStats(completed=1000, errors=5, latency_ms={"p99": 10.0}, sla_ms=20, sla_key="p99")
    assert not ok.violated  # 0.5% failed, inside the 1% tail p99 allows
    bad = ClassStats(completed=1000, errors=30, latency_ms={"p99": 10.0}, sla_ms=20,
                     sla_key="p99")
    assert bad.violated
    all_failed = ClassStats(completed=0, errors=7, sla_ms=20, sla_key="p99")
    assert all_failed.violated
    slow = ClassStats(completed=10, latency_ms={"p99": 25.0}, sla_ms=20, sla_key="p99")
    assert slow.violated
    assert not ClassStats(sla_ms=20).violated  # nothing happened, nothing violated



def test_span_round_trips_through_otlp_json():
    s = Span("a" * 32, "b" * 16, "c" * 16, "user", "get", 1_000, 2_500_000,
             {"leanstack.class": "read", "leanstack.cpu_ms": 0.25, "n": 3, "ok": True})
    line = s.to_otlp()
    doc = json.loads(line)
    otlp = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert otlp["traceId"] == "a" * 32 and otlp["startTimeUnixNano"] == "1000"
    assert Span.from_otlp(line) == s
    assert s.duration_ms == 2.499


def test_static_allocation_and_edits():
    app = load_app("social-network")
    a = Allocation.static_max(app)
    assert a.tiers["nginx"].cpu == 1.0 and a.tiers["user-store"].cpu == 0.5
    b = a.with_tier("nginx", cpu=0.3)
    assert b.tiers["nginx"].cpu == 0.3 and a.tiers["nginx"].cpu == 1.0
    assert a.total_cpu() - b.total_cpu() == pytest.approx(0.7)


def _span(sid: str, parent: str, service: str, start_ms: float, end_ms: float,
          **attrs) -> Span:
    return Span("t" * 32, sid, parent, service, "op", int(start_ms * 1e6), int(end_ms * 1e6),
                attrs)


def test_own_latency_subtracts_the_union_of_synchronous_children():
    spans = [
        _span("a", "", "front", 0, 10),
        _span("b", "a", "db", 2, 6),      # overlaps c: the union 2..7 counts once
        _span("c", "a", "cache", 4, 7),
        _span("d", "a", "worker", 8, 30, **{"leanstack.queue_ms": 1.5}),  # async consumer
    ]
    own = own_latencies_ms(spans)
    assert own["front"] == [pytest.approx(5.0)]  # 10 - (7 - 2); the consumer is not waited on
    assert own["db"] == [pytest.approx(4.0)] and own["cache"] == [pytest.approx(3.0)]
    assert own["worker"] == [pytest.approx(23.5)]  # its run plus the time it sat in the queue


def test_own_latency_finds_children_read_in_the_previous_batch():
    child = _span("b", "a", "db", 1, 9)
    parent = _span("a", "", "front", 0, 10)
    assert own_latencies_ms([parent])["front"] == [pytest.approx(10.0)]
    assert own_latencies_ms([parent], earlier=[child])["front"] == [pytest.approx(2.0)]


def test_simulated_own_latency_is_below_span_latency_for_callers_only():
    from leanstack.microservices.load import LoadSpec
    from leanstack.microservices.sim import SimBackend

    app = load_app("social-network")
    backend = SimBackend(seed=2)
    backend.deploy(app, Allocation.static_max(app))
    backend.start(LoadSpec("constant", 200, 5))
    obs = [backend.observe() for _ in range(5)][-1]
    backend.close()
    nginx, store = obs.tiers["nginx"], obs.tiers["post-storage-store"]
    assert nginx.own_latency_ms["p50"] < 0.5 * nginx.latency_ms["p50"]  # it mostly waits
    assert store.own_latency_ms["p50"] == pytest.approx(store.latency_ms["p50"])  # a leaf
