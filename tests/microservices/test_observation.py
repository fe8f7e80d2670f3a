"""Observation types: SLA verdicts, allocations and the OTLP span format."""

from __future__ import annotations

import json

import pytest

from leanstack.microservices.app import load_app
from leanstack.microservices.observation import Allocation, ClassStats, Span


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
