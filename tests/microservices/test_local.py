"""The local backend end to end: real processes in real cgroups, live allocation, no leftovers."""

import json
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from tests._require import require

from leanstack.errors import LeanstackError
from leanstack.microservices import cgroups
from leanstack.microservices.app import APPS_DIR, load_app, parse_app
from leanstack.microservices.load import LoadSpec
from leanstack.microservices.local import LocalBackend, deploy_order
from leanstack.microservices.observation import Allocation, TierAllocation
from leanstack.ports import free_ports

from .helpers import LOCAL_HOW, alive, local_missing

pytestmark = pytest.mark.cgroups


@pytest.fixture(autouse=True, scope="module")
def _local_backend_can_run():
    """Fails in CI, skips loudly elsewhere, when root, cgroups or the servers are missing."""
    require(local_missing(), LOCAL_HOW)

TINY = """
name = "tiny"
[services.front.endpoints.get]
work = "json"
cpu_ms = 0.3
calls = [["back.get", "cache.get"]]
[services.front.endpoints.burn]
work = "hash"
cpu_ms = 20
cv = 0
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


def _post(url: str, cls: str = "") -> int:
    req = urllib.request.Request(url, data=b"{}", method="POST",
                                 headers={"x-leanstack-class": cls})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _wait_dead(pids: list[int], timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def _run_dirs(run_id: str) -> list[Path]:
    return [cgroups.CGROUP_ROOT / h / cgroups.PARENT / run_id for h in cgroups.HIERARCHIES]


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    f = tmp_path_factory.mktemp("app") / "tiny.toml"
    f.write_text(TINY)
    return f


@pytest.fixture(scope="module")
def tiny(tiny_file):
    app = load_app(tiny_file)
    b = LocalBackend(interval_s=0.5)
    b.deploy(app, Allocation.static_max(app))
    yield b
    b.close()


def test_deploy_order_is_callees_first():
    app = load_app("social-network")
    order = deploy_order(app)
    assert set(order) == set(app.services)
    for name, svc in app.services.items():
        for ep in svc.endpoints.values():
            for c in ep.calls:
                assert order.index(c.service) < order.index(name)


def test_observe_reports_real_tier_statistics(tiny):
    url = tiny.urls()["read"]
    tiny.observe()  # start a fresh interval
    for _ in range(20):
        assert _post(url, "read") == 200
    obs = tiny.observe()
    front, store, cache = obs.tiers["front"], obs.tiers["store"], obs.tiers["cache"]
    assert obs.interval_s == 0.5 and obs.classes["read"].sla_ms == 50
    assert obs.cfs_period_ms == tiny.cfs_period_us / 1000 == 100.0
    assert front.cpu_limit == pytest.approx(1.0) and store.cpu_limit == pytest.approx(1.0)
    assert front.rps > 0 and obs.tiers["back"].rps > 0
    assert store.rps > cache.rps > 0  # two redis ops per request, one memcached op
    assert front.cpu_used > 0 and front.memory_bytes > 0 and store.memory_bytes > 0
    assert set(front.latency_ms) == {"p50", "p90", "p95", "p99", "p99.9"}
    assert front.latency_ms["p99"] >= obs.tiers["back"].latency_ms["p50"] > 0
    # 20 requests one after another: at most one in flight, and some time with one
    assert front.replicas == 1 and 0 < front.inflight <= 1.0 + 1e-6


def test_spans_link_across_tiers_and_filter_by_time(tiny):
    since = time.time_ns()
    assert _post(tiny.urls()["read"], "read") == 200
    time.sleep(0.35)
    spans = tiny.spans(since)
    assert spans and all(s.end_ns >= since for s in spans)
    front = next(s for s in spans if s.service == "front")
    trace = [s for s in spans if s.trace_id == front.trace_id]
    back = next(s for s in trace if s.service == "back")
    assert back.parent_span_id == front.span_id
    assert {s.service for s in trace} == {"front", "back", "store", "cache"}
    assert not tiny.spans(time.time_ns() + 10**12)


def test_allocation_change_takes_effect_live(tiny):
    url = tiny.urls()["read"].rsplit("/", 1)[0] + "/burn"
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            _post(url)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    base = Allocation.static_max(tiny.app)
    try:
        tiny.set_allocation(base.with_tier("front", cpu=0.2))
        for t in threads:
            t.start()
        tiny.observe()
        low = [tiny.observe().tiers["front"] for _ in range(2)]
        tiny.set_allocation(base.with_tier("front", cpu=0.7))
        tiny.observe()
        high = [tiny.observe().tiers["front"] for _ in range(2)]
    finally:
        stop.set()
        for t in threads:
            t.join()
        tiny.set_allocation(base)
    assert all(s.cpu_limit == pytest.approx(0.2) for s in low)
    # a 0.5 s window misaligned with the 100 ms CFS periods may catch one extra period's quota
    assert sum(s.cpu_used for s in low) / len(low) <= 0.25, low
    assert sum(s.throttled_periods for s in low) > 0 and sum(s.throttled_s for s in low) > 0
    assert all(s.cpu_limit == pytest.approx(0.7) for s in high)
    assert max(s.cpu_used for s in high) > 0.3, high  # above the old cap: new quota in force


def test_replica_change_starts_and_stops_workers(tiny):
    base = Allocation.static_max(tiny.app)
    tiny.set_allocation(base.with_tier("front", replicas=2))
    pids = tiny.pids()["front"]
    assert len(pids) == 2
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not _listening(tiny, "front", 2):
        time.sleep(0.1)
    assert _listening(tiny, "front", 2)
    assert sorted(tiny.cgroups.pids("front")) == sorted(pids)
    assert all(_post(tiny.urls()["read"], "read") == 200 for _ in range(10))
    assert tiny.observe().tiers["front"].replicas == 2
    tiny.set_allocation(base)
    assert tiny.pids()["front"] == pids[:1]
    assert not _wait_dead(pids[1:])
    assert all(_post(tiny.urls()["read"], "read") == 200 for _ in range(10))


def _listening(backend: LocalBackend, tier: str, n: int) -> bool:
    ready = 0
    for w in backend.tiers[tier].workers:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{w.admin_port}/health", timeout=1).read()
            ready += 1
        except OSError:
            pass
    return ready == n


def test_bad_allocations_are_one_line_errors(tiny):
    base = Allocation.static_max(tiny.app)
    cases = {
        "no entry for tier(s) cache": Allocation({k: v for k, v in base.tiers.items()
                                                   if k != "cache"}),
        "unknown tier(s) ghost": Allocation({**base.tiers, "ghost": TierAllocation(1.0)}),
        "runs one server": base.with_tier("store", replicas=2),
        "below the 0.01-core minimum": base.with_tier("front", cpu=0.0),
        "use a whole number >= 1": base.with_tier("back", replicas=0),
    }
    for text, alloc in cases.items():
        with pytest.raises(LeanstackError, match=re.escape(text)) as e:
            tiny.set_allocation(alloc)
        assert "\n" not in str(e.value)


def test_use_before_deploy_is_a_one_line_error():
    b = LocalBackend()
    with pytest.raises(LeanstackError, match="call deploy"):
        b.observe()
    with pytest.raises(LeanstackError, match="interval must be above 0"):
        LocalBackend(interval_s=0)
    b.close()  # closing an unused backend is harmless


def test_dead_tier_is_reported_and_close_leaves_nothing(tiny_file, tmp_path):
    app = load_app(tiny_file)
    b = LocalBackend(interval_s=0.5, run_dir=tmp_path / "run")
    b.deploy(app, Allocation.static_max(app))
    pids = [p for ps in b.pids().values() for p in ps]
    assert len(pids) == 4 and all(alive(p) for p in pids)
    run_id = b.cgroups.run_id
    assert all(d.is_dir() for d in _run_dirs(run_id))
    b.tiers["back"].workers[0].proc.kill()  # a tier dying on its own breaks the run, loudly
    with pytest.raises(LeanstackError, match=r"tier 'back' process \d+ exited with code -9") as e:
        b.observe()
    assert "\n" not in str(e.value)
    b.close()
    b.close()
    assert not _wait_dead(pids, timeout=1)
    assert not any(d.exists() for d in _run_dirs(run_id))
    assert (tmp_path / "run" / "ports.json").exists()  # a given run dir is kept


def test_a_worker_that_dies_while_starting_names_its_error_and_keeps_its_log(tiny_file,
                                                                            monkeypatch):
    from leanstack.microservices import local

    def crashing_worker(self, tier):
        with open(self.run_dir / f"{tier.name}.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-c", "print('starting'); import sys; "
                 "raise ConnectionRefusedError('[Errno 111] redis refused'); "],
                stdout=log, stderr=log, start_new_session=True)
        return local._WorkerProc(proc, free_ports(1)[0])

    monkeypatch.setattr(LocalBackend, "_start_worker", crashing_worker)
    app = load_app(tiny_file)
    b = LocalBackend()
    with pytest.raises(LeanstackError, match=r"tier '(front|back)' exited with code 1 before it "
                       r"was ready: ConnectionRefusedError: \[Errno 111\] redis refused — see ")\
            as e:
        b.deploy(app, Allocation.static_max(app))
    log = Path(str(e.value).rsplit(" — see ", 1)[1])
    assert "redis refused" in log.read_text()  # the log the error names outlives the run
    assert b.cgroups is not None and not any(d.exists() for d in _run_dirs(b.cgroups.run_id))
    shutil.rmtree(log.parent)


RUNNER = textwrap.dedent("""
    import json, signal, sys, time
    # a shell starts background jobs with SIGINT ignored; a user's runner gets Ctrl-C
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from leanstack.microservices.app import APPS_DIR, load_app, parse_app
    from leanstack.microservices.local import LocalBackend
    from leanstack.microservices.observation import Allocation
    app = load_app(sys.argv[1])
    b = LocalBackend()
    b.deploy(app, Allocation.static_max(app))
    pids = [p for ps in b.pids().values() for p in ps]
    print(json.dumps({"pids": pids, "run_id": b.cgroups.run_id, "run_dir": str(b.run_dir)}),
          flush=True)
    time.sleep(120)  # no try/finally: cleanup must come from the backend itself
""")


def _start_runner(tiny_file) -> tuple[subprocess.Popen, dict]:
    p = subprocess.Popen([sys.executable, "-c", RUNNER, str(tiny_file)],
                         stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    assert line, "runner failed to deploy"
    return p, json.loads(line)


def test_sigint_of_the_runner_leaves_nothing(tiny_file):
    p, info = _start_runner(tiny_file)
    assert all(alive(pid) for pid in info["pids"])
    p.send_signal(signal.SIGINT)
    p.wait(timeout=30)
    assert not _wait_dead(info["pids"], timeout=2)
    assert not any(d.exists() for d in _run_dirs(info["run_id"]))
    assert not Path(info["run_dir"]).exists()


def test_sigterm_of_the_runner_leaves_nothing(tiny_file):
    p, info = _start_runner(tiny_file)
    p.terminate()
    assert p.wait(timeout=30) == 143
    assert not _wait_dead(info["pids"], timeout=2)
    assert not any(d.exists() for d in _run_dirs(info["run_id"]))
    assert not Path(info["run_dir"]).exists()


def test_sigkill_of_the_runner_is_cleaned_up_by_the_next_start(tiny_file):
    p, info = _start_runner(tiny_file)
    p.kill()
    p.wait()
    assert not _wait_dead(info["pids"])  # PR_SET_PDEATHSIG took them down with the runner
    stale = _run_dirs(info["run_id"])
    assert all(d.exists() for d in stale)  # nobody removed the cgroups yet
    straggler = subprocess.Popen(["sleep", "120"], start_new_session=True)
    for h in cgroups.HIERARCHIES:  # something still running inside the stale run
        (cgroups.CGROUP_ROOT / h / cgroups.PARENT / info["run_id"] / "front" /
         "cgroup.procs").write_text(str(straggler.pid))
    app = load_app(tiny_file)
    b = LocalBackend()
    try:
        b.deploy(app, Allocation.static_max(app))
        assert not any(d.exists() for d in stale)
        assert straggler.wait(timeout=10) == -signal.SIGKILL
        assert not Path(info["run_dir"]).exists()  # its logs and app.json went with it
    finally:
        b.close()


def test_pipeline_class_answers_after_its_last_stage():
    data = tomllib.loads((APPS_DIR / "video-pipeline.toml").read_text())
    data["services"]["face-detect"]["endpoints"]["detect"]["cv"] = 0  # exactly its 10 ms
    app = parse_app(data)
    b = LocalBackend(interval_s=0.5)
    try:
        b.deploy(app, Allocation.static_max(app))
        since = time.time_ns()
        assert _post(b.urls()["process-video"], "process-video") == 200
        time.sleep(0.35)
        spans = b.spans(since)
        upload = next(s for s in spans if s.service == "upload")
        trace = {s.service: s for s in spans if s.trace_id == upload.trace_id}
        assert {"upload", "scene-split", "face-detect", "store-writer"} <= set(trace)
        # the entry answered only after the last stage did its work (its span closes after
        # the done signal, so compare with the stage's start plus its CPU time)
        last = trace["store-writer"]
        assert last.start_ns + last.attributes["leanstack.cpu_ms"] * 1e6 <= upload.end_ns
        assert trace["scene-split"].parent_span_id == upload.span_id
        assert trace["face-detect"].parent_span_id == trace["scene-split"].span_id
        # the queue wait reaches back to when scene-split pushed the message, during its span
        face, split = trace["face-detect"], trace["scene-split"]
        enqueued_ns = face.start_ns - face.attributes["leanstack.queue_ms"] * 1e6
        assert split.start_ns - 1e6 <= enqueued_ns <= split.end_ns + 1e6
        assert trace["face-detect"].attributes["leanstack.cpu_ms"] > 5
        assert _post(b.urls()["read-meta"], "read-meta") == 200
    finally:
        b.close()


def test_social_network_serves_every_class_under_real_load():
    app = load_app("social-network")
    b = LocalBackend(interval_s=1.0)
    try:
        b.deploy(app, Allocation.static_max(app))
        since = time.time_ns()
        b.start(LoadSpec("poisson", rps=20, duration_s=3, seed=1))
        observations = [b.observe() for _ in range(4)]
        time.sleep(0.3)
        spans = b.spans(since)
    finally:
        b.close()
    for name in app.classes:
        assert sum(o.classes[name].completed for o in observations) > 0, name
        assert sum(o.classes[name].errors for o in observations) == 0, name
    assert {s.service for s in spans} == set(app.services)
    offered = sum(o.offered_rps * o.interval_s for o in observations)
    assert offered == pytest.approx(20 * 3, rel=0.35)  # the 3 s of 20 req/s that were sent
    busiest = max(observations, key=lambda o: o.tiers["nginx"].rps)
    assert busiest.tiers["nginx"].rps > 5 and busiest.tiers["home-timeline-redis"].rps > 0
