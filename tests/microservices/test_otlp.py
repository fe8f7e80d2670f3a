"""Spans over OTLP/HTTP: the workers' exporter, the receiver, and the Kubernetes backend's spans.

The end-to-end test runs REAL local-backend workers (real processes, cgroups, Redis, memcached)
exporting to the receiver of a Kubernetes backend whose API server is the FAKE of k8s_fake.py,
and compares what arrived with the span files the local backend reads itself.
"""

import gzip
import json
import time
import tomllib
import urllib.error
import urllib.request

import numpy as np
import pytest
from tests._require import require

from leanstack.errors import LeanstackError
from leanstack.microservices.app import load_app, parse_app
from leanstack.microservices.k8s.manifests import ExportOptions, manifests, read_manifests
from leanstack.microservices.k8s.validate import check_manifests, supported_versions
from leanstack.microservices.load import LoadSpec
from leanstack.microservices.local import LocalBackend
from leanstack.microservices.observation import Allocation, Span, TierStats, own_latencies_ms
from leanstack.microservices.otlp import (
    ENDPOINT_ENV,
    OtlpReceiver,
    export_request,
    parse_export_request,
    traces_endpoint,
)
from leanstack.microservices.prometheus import Window
from leanstack.microservices.runner import make_backend
from leanstack.microservices.worker import main as worker_main

from .helpers import LOCAL_HOW, local_missing, run_cli
from .k8s_fake import FakeApiServer
from .test_prometheus import TINY


def _span(service: str, i: int, **attrs) -> Span:
    return Span(f"{i:032x}", f"{i + 1:016x}", "", service, "get", 10**18 + i * 1000,
                10**18 + i * 1000 + 500 + i, attrs)


def _post(url: str, body: bytes, ctype: str = "application/json",
          encoding: str | None = None) -> int:
    headers = {"Content-Type": ctype, **({"Content-Encoding": encoding} if encoding else {})}
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def test_export_request_round_trips_spans_grouped_by_service():
    spans = [_span("front", 1, **{"leanstack.class": "read", "leanstack.cpu_ms": 0.5}),
             _span("cache", 2, **{"leanstack.span_kind": "client", "error": True}),
             _span("front", 3, **{"leanstack.queue_ms": 2.0})]
    body = export_request(spans)
    data = json.loads(body)
    assert [r["resource"]["attributes"][0]["value"]["stringValue"]
            for r in data["resourceSpans"]] == ["front", "cache"]
    assert sorted(parse_export_request(body), key=lambda s: s.start_ns) == spans
    with pytest.raises(ValueError, match="not an OTLP JSON"):
        parse_export_request(b'{"resourceSpans": [{"scopeSpans": [{"spans": [{}]}]}]}')


def test_traces_endpoint_follows_the_opentelemetry_variables():
    assert traces_endpoint({}) is None
    assert traces_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}) == \
        "http://c:4318/v1/traces"
    assert traces_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                            ENDPOINT_ENV: "http://d:9/x"}) == "http://d:9/x"


def test_receiver_keeps_json_spans_and_refuses_the_rest():
    with OtlpReceiver("127.0.0.1", 0) as rx:
        spans = [_span("a", i) for i in range(5)]
        assert _post(rx.url, export_request(spans[:3])) == 200
        assert _post(rx.url, gzip.compress(export_request(spans[3:])), encoding="gzip") == 200
        assert rx.spans() == spans
        assert rx.spans(since_ns=spans[3].end_ns) == spans[3:]
        assert _post(rx.url, b"\x0a\x00", ctype="application/x-protobuf") == 415
        assert _post(rx.url, b"{not json") == 400
        assert _post(rx.url.replace("/v1/traces", "/v1/logs"), b"{}") == 404
        assert rx.received == 5 and rx.rejected == 2
        with pytest.raises(LeanstackError, match="cannot listen for OTLP spans") as e:
            OtlpReceiver("127.0.0.1", rx.port)
        assert "\n" not in str(e.value)


def test_receiver_reads_old_and_new_spans_once_each_in_end_order_and_drops_the_earliest():
    spans = [_span("a", i) for i in range(8)]  # end time grows with i
    with OtlpReceiver("127.0.0.1", 0, max_spans=6) as rx:
        rx.add([spans[4], spans[2], spans[5]])
        assert rx.spans() == [spans[2], spans[4], spans[5]]
        rx.add([spans[6], spans[3]])  # one later, one arriving late between those kept
        assert rx.spans() == spans[2:7]  # old and new, no duplicates, by end time
        assert rx.spans() == spans[2:7]  # reading again changes nothing
        assert rx.spans(since_ns=spans[4].end_ns) == spans[4:7]
        assert rx.spans(since_ns=spans[6].end_ns + 1) == []
        late_twin = _span("b", 5)  # the same end time as spans[5], arriving after it
        rx.add([spans[7], late_twin, spans[1]])  # 8 spans now: the 2 earliest-ended go
        assert rx.spans() == [spans[3], spans[4], spans[5], late_twin, spans[6], spans[7]]
        assert rx.received == 8


def test_export_sets_the_endpoint_and_stops_span_files_in_pods():
    app = load_app("social-network")
    url = "http://leanstack-control.leanstack.svc:4318/v1/traces"
    objs = manifests(app, None, ExportOptions(otlp_endpoint=url))
    workers = [o["spec"]["template"]["spec"]["containers"][0] for o in objs
               if o["kind"] == "Deployment" and not app.services[o["metadata"]["name"]].is_storage]
    assert workers and all(c["env"] == [{"name": ENDPOINT_ENV, "value": url}]
                           and "--no-span-files" in c["command"] for c in workers)
    versions = supported_versions()
    check_manifests(objs, [versions[0], versions[-1]])
    plain = manifests(app)
    assert not any("env" in o["spec"]["template"]["spec"]["containers"][0] for o in plain
                   if o["kind"] == "Deployment")
    with pytest.raises(LeanstackError, match="not an http"):
        manifests(app, None, ExportOptions(otlp_endpoint="collector:4318"))


def test_worker_without_an_endpoint_refuses_to_drop_its_span_files(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv(ENDPOINT_ENV, raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    (tmp_path / "ports.json").write_text("{}")
    with pytest.raises(SystemExit) as e:
        worker_main(["--app", "social-network", "--service", "nginx", "--port", "1",
                     "--admin-port", "2", "--run-dir", str(tmp_path), "--no-span-files"])
    assert e.value.code == 2
    assert "--no-span-files needs OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" in capsys.readouterr().err


def test_k8s_backend_otlp_listen_is_checked():
    with pytest.raises(LeanstackError, match="not HOST:PORT"):
        make_backend("k8s", 1.0, api_url="http://127.0.0.1:9", otlp_listen="4318")


@pytest.mark.cgroups
def test_local_workers_export_the_same_spans_the_k8s_backend_returns(monkeypatch):
    """Real workers -> OTLP/HTTP -> the k8s backend's receiver: spans() holds exactly the spans
    the local backend reads from its own span files (counts per tier, latencies, ids)."""
    require(local_missing(), LOCAL_HOW)
    app = parse_app(tomllib.loads(TINY))
    with FakeApiServer("1.33") as fake:
        k8s = make_backend("k8s", 1.0, api_url=fake.url, ready_timeout_s=5.0,
                           otlp_listen="127.0.0.1:0")
        k8s.deploy(app, Allocation.static_max(app))
        monkeypatch.setenv(ENDPOINT_ENV, k8s.receiver.url)  # the workers inherit it
        local = LocalBackend(interval_s=1.0)
        try:
            local.deploy(app, Allocation.static_max(app))
            t_start = time.time_ns()
            local.start(LoadSpec("constant", 80, 4.0, seed=5))
            for _ in range(3):
                local.observe()
            cutoff = time.time_ns() - 500_000_000  # both sources have every span before this
            time.sleep(1.0)  # two flush periods beyond the cutoff
            from_files = [s for s in local.spans(t_start) if s.end_ns < cutoff]
            received = [s for s in k8s.spans(t_start) if s.end_ns < cutoff]
        finally:
            local.close()
            k8s.close()
    assert len(from_files) > 500
    assert {s.span_id: s for s in received} == {s.span_id: s for s in from_files}
    for tier in app.services:
        mine = [s.duration_ms for s in from_files if s.service == tier]
        theirs = [s.duration_ms for s in received if s.service == tier]
        assert len(theirs) == len(mine) > 0, tier
        assert np.percentile(theirs, 99) == np.percentile(mine, 99)
    assert own_latencies_ms(received) == own_latencies_ms(from_files)


def test_k8s_observe_reports_own_latency_from_received_spans(monkeypatch):
    """A parent of 10 ms with a 4 ms child has 6 ms of its own; the window's other statistics
    come from Prometheus (stubbed here: the Prometheus path is tested in test_prometheus)."""
    app = parse_app(tomllib.loads(TINY))
    with FakeApiServer("1.33") as fake:
        b = make_backend("k8s", 1.0, api_url=fake.url, ready_timeout_s=5.0,
                         otlp_listen="127.0.0.1:0")
        b.deploy(app, Allocation.static_max(app))
        b.start()
        t = int(b._t0 * 1e9) + 100_000_000
        parent = Span("a" * 32, "1" * 16, "", "front", "get", t, t + 10_000_000)
        child = Span("a" * 32, "2" * 16, "1" * 16, "back", "get", t + 2_000_000, t + 6_000_000)
        assert _post(b.receiver.url, export_request([parent, child])) == 200
        monkeypatch.setattr(b._observer, "window", lambda t0, t1: Window(
            tiers={n: TierStats() for n in app.services}))
        monkeypatch.setattr(time, "sleep", lambda s: None)
        obs = b.observe()
        b.close()
    assert obs.tiers["front"].own_latency_ms["p50"] == pytest.approx(6.0)
    assert obs.tiers["back"].own_latency_ms["p99"] == pytest.approx(4.0)
    assert obs.tiers["store"].own_latency_ms == {}


def test_cli_export_and_control_take_the_otlp_options(monkeypatch, capsys, tmp_path):
    url = "http://controller.example:4318/v1/traces"
    rc, out, err = run_cli(monkeypatch, capsys, "micro", "export", "--app", "video-pipeline",
                           str(tmp_path / "k"), "--otlp-endpoint", url)
    assert rc == 0, err
    deps = [o for o in read_manifests(tmp_path / "k") if o["kind"] == "Deployment"
            and o["spec"]["template"]["spec"]["containers"][0]["name"] == "worker"]
    assert deps and all(d["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] == url
                        for d in deps)
    rc, out, err = run_cli(monkeypatch, capsys, "micro", "control", "--app", "video-pipeline",
                           "--out", str(tmp_path / "r.json"), "--otlp-endpoint", url)
    assert rc == 2 and "--otlp-endpoint only applies with --deploy" in err
