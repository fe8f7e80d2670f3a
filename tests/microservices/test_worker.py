"""The service process: real work, real downstream calls, W3C trace propagation, OTLP spans."""

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from leanstack.errors import LeanstackError
from leanstack.microservices.app import Call, load_app, parse_app
from leanstack.microservices.cgroups import die_with_parent
from leanstack.microservices.observation import Span
from leanstack.microservices.storage import StorageServer
from leanstack.microservices.worker import async_leaves, done_service, parse_traceparent
from leanstack.ports import free_ports

TINY = """
name = "tiny"
[services.front.endpoints.get]
work = "json"
cpu_ms = 0.3
calls = [["back.get", "cache.get"]]
[services.back.endpoints.get]
work = "hash"
cpu_ms = 0.5
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
TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"


def _post(url: str, headers: dict | None = None) -> int:
    req = urllib.request.Request(url, data=b"{}", method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read()


def _start_worker(app_file: Path, run_dir: Path, service: str, port: int, admin: int):
    log = open(run_dir / f"{service}.log", "ab")  # noqa: SIM115
    with log:
        p = subprocess.Popen([sys.executable, "-m", "leanstack.microservices.worker", "--app",
                              str(app_file), "--service", service, "--port", str(port),
                              "--admin-port", str(admin), "--run-dir", str(run_dir)],
                             stdout=log, stderr=log, preexec_fn=die_with_parent())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            _get(f"http://127.0.0.1:{admin}/health")
            return p
        except OSError:
            assert p.poll() is None, (run_dir / f"{service}.log").read_text()
            time.sleep(0.05)
    raise AssertionError(f"{service} not ready")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("worker")
    app_file = d / "tiny.toml"
    app_file.write_text(TINY)
    ports = dict(zip(["front", "back", "store", "cache"], free_ports(4), strict=True))
    (d / "ports.json").write_text(json.dumps(ports))
    servers = [StorageServer("store", "redis", ports["store"], d),
               StorageServer("cache", "memcached", ports["cache"], d)]
    procs = {}
    try:
        for s in servers:
            s.start(die_with_parent())
            s.wait_ready()
        admins = free_ports(2)
        for svc, admin in zip(["back", "front"], admins, strict=True):
            procs[svc] = _start_worker(app_file, d, svc, ports[svc], admin)
        yield {"dir": d, "ports": ports, "admin": dict(zip(["back", "front"], admins,
                                                           strict=True)), "procs": procs}
    finally:
        for p in procs.values():
            p.terminate()
            p.wait(timeout=10)
        for s in servers:
            s.stop()


def _spans(d: Path) -> list[Span]:
    time.sleep(0.35)  # workers flush spans every 0.1 s
    lines = [ln for f in d.glob("spans-*.jsonl") for ln in f.read_text().splitlines()]
    for ln in lines:
        rec = json.loads(ln)["resourceSpans"][0]
        s = rec["scopeSpans"][0]["spans"][0]
        assert len(s["traceId"]) == 32 and len(s["spanId"]) == 16
        assert int(s["startTimeUnixNano"]) <= int(s["endTimeUnixNano"])
        assert rec["resource"]["attributes"][0]["key"] == "service.name"
    return [Span.from_otlp(ln) for ln in lines]


def test_request_spans_link_parent_and_child_across_tiers(tiny):
    url = f"http://127.0.0.1:{tiny['ports']['front']}/get"
    status = _post(url, {"traceparent": f"00-{TRACE}-{PARENT}-01",
                         "x-leanstack-class": "read"})
    assert status == 200
    spans = [s for s in _spans(tiny["dir"]) if s.trace_id == TRACE]
    by = {s.service: s for s in spans}
    assert set(by) == {"front", "back", "store", "cache"}
    assert len([s for s in spans if s.service == "store"]) == 2  # set, then get
    assert by["front"].parent_span_id == PARENT
    assert by["back"].parent_span_id == by["front"].span_id
    assert by["cache"].parent_span_id == by["front"].span_id
    assert all(s.parent_span_id == by["back"].span_id for s in spans if s.service == "store")
    assert by["front"].attributes["leanstack.cpu_ms"] >= 0.0
    assert by["back"].attributes["leanstack.cpu_ms"] > 0.0
    assert all(s.attributes["leanstack.class"] == "read" for s in spans)
    assert by["front"].start_ns <= by["back"].start_ns <= by["back"].end_ns <= by["front"].end_ns


def test_missing_or_bad_traceparent_starts_a_new_trace(tiny):
    assert _post(f"http://127.0.0.1:{tiny['ports']['front']}/get",
                 {"traceparent": "garbage"}) == 200
    fronts = [s for s in _spans(tiny["dir"]) if s.service == "front" and not s.parent_span_id]
    assert fronts and all(len(s.trace_id) == 32 for s in fronts)


def test_stats_and_prometheus_metrics_count_requests(tiny):
    admin = tiny["admin"]["back"]
    before = json.loads(_get(f"http://127.0.0.1:{admin}/stats"))
    for _ in range(3):
        assert _post(f"http://127.0.0.1:{tiny['ports']['back']}/get") == 200
    after = json.loads(_get(f"http://127.0.0.1:{admin}/stats"))
    assert after["served"] - before["served"] == 3
    assert after["inflight"] == 0 and after["inflight_integral_s"] > before["inflight_integral_s"]
    assert after["work_cpu_s"] > before["work_cpu_s"]
    text = _get(f"http://127.0.0.1:{admin}/metrics").decode()
    assert 'leanstack_requests_total{endpoint="get",service="back"}' in text


def test_unknown_endpoint_is_404(tiny):
    assert _post(f"http://127.0.0.1:{tiny['ports']['front']}/nope") == 404


def test_bad_service_or_app_is_a_one_line_error(tmp_path):
    app_file = tmp_path / "tiny.toml"
    app_file.write_text(TINY)
    for args in (["--app", str(app_file), "--service", "store"],
                 ["--app", str(tmp_path / "missing.toml"), "--service", "front"]):
        r = subprocess.run([sys.executable, "-m", "leanstack.microservices.worker", *args,
                            "--port", "1", "--admin-port", "2", "--run-dir", str(tmp_path)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2
        assert "Traceback" not in r.stderr
        assert r.stderr.strip().splitlines()[-1].startswith("worker.py: error:")


def test_downstream_failure_gives_502_and_an_error_span(tmp_path):
    app_file = tmp_path / "tiny.toml"
    app_file.write_text(TINY)
    front_port, back_port, store, cache, admin = free_ports(5)
    (tmp_path / "ports.json").write_text(json.dumps(
        {"front": front_port, "back": back_port, "store": store, "cache": cache}))
    p = _start_worker(app_file, tmp_path, "front", front_port, admin)
    try:  # nothing listens on back, store or cache
        assert _post(f"http://127.0.0.1:{front_port}/get") == 502
        spans = _spans(tmp_path)
        assert any(s.service == "front" and s.attributes.get("error") for s in spans)
    finally:
        p.terminate()
        p.wait(timeout=10)


def test_traceparent_parsing():
    assert parse_traceparent(f"00-{TRACE}-{PARENT}-01") == (TRACE, PARENT)
    for bad in ("", "00-xyz-abc-01", f"00-{'0' * 32}-{PARENT}-01", f"00-{TRACE}-zz-01"):
        trace, parent = parse_traceparent(bad)
        assert parent == "" and len(trace) == 32 and trace != TRACE


def test_pipeline_leaf_counting():
    video = load_app("video-pipeline")
    assert async_leaves(video, Call("upload", "ingest")) == 1
    assert async_leaves(video, Call("upload", "meta")) == 0
    assert done_service(video, Call("upload", "ingest")) == "video-queue"
    fan = parse_app({
        "name": "fan",
        "services": {
            "q": {"kind": "redis"},
            "entry": {"endpoints": {"go": {"cpu_ms": 0.1, "calls": [["mid.go"]],
                                           "enqueue": ["a.run", "b.run"]}}},
            "mid": {"endpoints": {"go": {"cpu_ms": 0.1, "enqueue": ["b.run"]}}},
            "a": {"queue": "q", "endpoints": {"run": {"cpu_ms": 0.1, "enqueue": ["b.run",
                                                                                "c.run"]}}},
            "b": {"queue": "q", "endpoints": {"run": {"cpu_ms": 0.1}}},
            "c": {"queue": "q", "endpoints": {"run": {"cpu_ms": 0.1}}},
        },
        "classes": {"go": {"entry": "entry.go", "weight": 1, "wait": "pipeline",
                           "sla": {"percentile": 99, "ms": 100}}},
    })
    # mid -> b (1); a -> b, c (2); b (1)
    assert async_leaves(fan, Call("entry", "go")) == 4


class _Planted:
    """A pickle that runs code when loaded: what a writable app.pickle would let anyone do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_worker_reads_the_app_as_data_and_never_unpickles(tmp_path):
    import pickle

    from leanstack.microservices.worker import load_app_file

    app = load_app("social-network")
    as_json = tmp_path / "app.json"
    as_json.write_text(json.dumps(app.to_data()))
    assert load_app_file(as_json).services == app.services
    marker = tmp_path / "ran"
    planted = tmp_path / "app.pickle"
    planted.write_bytes(pickle.dumps(_Planted(str(marker))))
    with pytest.raises(LeanstackError):
        load_app_file(planted)
    assert not marker.exists()
    as_json.write_text('{"name": "x", "services": {}, "classes": {}}')
    with pytest.raises(LeanstackError, match="no services"):
        load_app_file(as_json)


def test_metrics_have_the_latency_histogram_and_storage_calls(tiny):
    admin = tiny["admin"]["front"]
    for _ in range(4):
        assert _post(f"http://127.0.0.1:{tiny['ports']['front']}/get",
                     {"x-leanstack-class": "read"}) == 200
    text = _get(f"http://127.0.0.1:{admin}/metrics").decode()
    count = re.search(r'leanstack_request_duration_seconds_count\{class="read",endpoint="get",'
                      r'ok="true",service="front"\} (\S+)', text)
    assert count and float(count.group(1)) >= 4
    assert re.search(r'leanstack_storage_calls_total\{op="get",service="cache"\} [1-9]', text)
    assert "leanstack_inflight_seconds_total" in text
    back = _get(f"http://127.0.0.1:{tiny['admin']['back']}/metrics").decode()
    assert re.search(r'leanstack_storage_calls_total\{op="set",service="store"\} [1-9]', back)


def test_hosts_file_points_calls_at_other_hosts(tiny, tmp_path):
    """``--hosts`` (how pods find Services): a wrong host for 'back' makes front's call fail."""
    app_file = tiny["dir"] / "tiny.toml"
    for host, want in (("localhost", 200), ("127.0.0.9", 502)):
        d = tmp_path / host
        d.mkdir()
        (d / "ports.json").write_text(json.dumps(tiny["ports"]))
        (d / "hosts.json").write_text(json.dumps({"back": host}))
        port, admin = free_ports(2)
        log = open(d / "front.log", "ab")  # noqa: SIM115
        with log:
            p = subprocess.Popen([sys.executable, "-m", "leanstack.microservices.worker",
                                  "--app", str(app_file), "--service", "front", "--port",
                                  str(port), "--admin-port", str(admin), "--run-dir", str(d),
                                  "--hosts", str(d / "hosts.json"), "--bind", "127.0.0.1"],
                                 stdout=log, stderr=log, preexec_fn=die_with_parent())
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    _get(f"http://127.0.0.1:{admin}/health")
                    break
                except OSError:
                    assert p.poll() is None and time.monotonic() < deadline
                    time.sleep(0.05)
            assert _post(f"http://127.0.0.1:{port}/get") == want, host
        finally:
            p.terminate()
            p.wait(timeout=10)


STALL = """
name = "stall"
[services.a.endpoints.get]
work = "json"
cpu_ms = 0.1
calls = [["cache.get"]]
[services.b.endpoints.get]
work = "json"
cpu_ms = 0.1
calls = [["bcache.get"]]
[services.cache]
kind = "memcached"
[services.bcache]
kind = "memcached"
client = "blocking"
[classes.read]
entry = "a.get"
weight = 1
sla = { percentile = 99, ms = 50 }
"""


def test_a_stalled_memcached_holds_only_a_blocking_clients_worker(tmp_path):
    """memcached stopped (SIGSTOP) mid-call: the worker with the asynchronous client keeps
    answering its admin port; the one with ``client = "blocking"`` (pymemcache) cannot."""
    import signal
    import threading

    app_file = tmp_path / "stall.toml"
    app_file.write_text(STALL)
    ports = dict(zip(["a", "b", "cache", "bcache"], free_ports(4), strict=True))
    (tmp_path / "ports.json").write_text(json.dumps(ports))
    servers = [StorageServer(n, "memcached", ports[n], tmp_path) for n in ("cache", "bcache")]
    procs = []
    try:
        for s in servers:
            s.start(die_with_parent())
            s.wait_ready()
        admins = free_ports(2)
        for svc, admin in zip(["a", "b"], admins, strict=True):
            procs.append(_start_worker(app_file, tmp_path, svc, ports[svc], admin))
        for svc in ("a", "b"):  # connections open, the first call done
            assert _post(f"http://127.0.0.1:{ports[svc]}/get") == 200
        answered = {}
        for s in servers:
            s.proc.send_signal(signal.SIGSTOP)
        calls = [threading.Thread(target=lambda svc=svc: answered.__setitem__(
            svc, _post(f"http://127.0.0.1:{ports[svc]}/get"))) for svc in ("a", "b")]
        for t in calls:
            t.start()
        time.sleep(0.5)
        stats = json.loads(_get(f"http://127.0.0.1:{admins[0]}/stats"))
        assert stats["inflight"] == 1  # the async worker waits, and still answers
        with pytest.raises(OSError):  # the blocking worker's event loop is held
            urllib.request.urlopen(f"http://127.0.0.1:{admins[1]}/stats", timeout=1.0)
        for s in servers:
            s.proc.send_signal(signal.SIGCONT)
        for t in calls:
            t.join(timeout=15)
        assert answered == {"a": 200, "b": 200}
    finally:
        for s in servers:
            if s.proc is not None:
                s.proc.send_signal(signal.SIGCONT)
        for p in procs:
            p.terminate()
            p.wait(timeout=10)
        for s in servers:
            s.stop()
