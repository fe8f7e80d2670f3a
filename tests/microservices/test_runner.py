"""The experiment runner on a small in-test backend: the loop, the result, the report, the spans,
and that the backend is closed on every path (controller error, Ctrl-C)."""

from __future__ import annotations

import json
import os

import pytest
from tests._require import needs

from leanstack.errors import LeanstackError
from leanstack.microservices import runner
from leanstack.microservices.app import parse_app
from leanstack.microservices.controllers import HPAController, StaticController
from leanstack.microservices.load import LoadSpec
from leanstack.microservices.observation import (
    Allocation,
    ClassStats,
    Observation,
    Span,
    TierStats,
)
from leanstack.microservices.runner import make_backend, read_spans, run_experiment, write_spans

from .helpers import LOCAL_HOW, local_missing

APP = parse_app({
    "name": "two-tier",
    "services": {
        "front": {"max_cpu": 2.0, "endpoints": {"get": {"cpu_ms": 5.0, "calls": [["db.get"]]}}},
        "db": {"kind": "redis", "max_cpu": 0.5},
    },
    "classes": {"get": {"entry": "front.get", "weight": 1.0,
                        "sla": {"percentile": 99, "ms": 20}}},
})


class FakeBackend:
    """A deterministic stand-in: each request costs 5 ms of front CPU; latency blows up when the
    front tier's allocation is below its demand."""

    name = "fake"

    def __init__(self, interval_s: float = 1.0, fail_observe_at: int | None = None) -> None:
        self.interval_s = interval_s
        self.fail_observe_at = fail_observe_at
        self.calls: list[str] = []
        self.allocations: list[Allocation] = []
        self.closed = 0
        self.t = 0.0

    def deploy(self, app, allocation):
        self.calls.append("deploy")
        self.allocations.append(allocation)

    def start(self, load):
        self.calls.append("start")
        self.load = load

    def set_allocation(self, allocation):
        self.calls.append("set_allocation")
        self.allocations.append(allocation)

    def observe(self) -> Observation:
        if self.fail_observe_at is not None and len(self.calls) >= self.fail_observe_at:
            raise KeyboardInterrupt
        self.calls.append("observe")
        self.t += self.interval_s
        rps = float(self.load.rate(self.t))
        front = self.allocations[-1].tiers["front"].cpu
        demand = rps * 0.005
        p99 = 5.0 if front >= demand else 500.0
        lat = {"p50": p99 / 5, "p90": p99 / 2, "p95": p99 / 1.5, "p99": p99, "p99.9": p99 * 2}
        n = int(rps * self.interval_s)
        return Observation(
            t=self.t, interval_s=self.interval_s, offered_rps=rps,
            classes={"get": ClassStats(n, 0, rps, lat, 20.0, "p99")},
            tiers={"front": TierStats(cpu_limit=front, cpu_used=min(front, demand), rps=rps),
                   "db": TierStats(cpu_limit=0.5, cpu_used=0.01, rps=rps)})

    def spans(self, since_ns: int = 0) -> list[Span]:
        return [Span("t1", "s1", "", "front", "get", 0, 2_000_000,
                     {"leanstack.class": "get", "leanstack.cpu_ms": 1.5})]

    def close(self) -> None:
        self.closed += 1


class Boom(StaticController):
    def decide(self, history, current):
        if len(history) == 3:
            raise RuntimeError("controller bug")
        return super().decide(history, current)


def test_run_loops_observe_decide_and_writes_result(tmp_path):
    be = FakeBackend()
    out = tmp_path / "r.json"
    data = run_experiment(APP, be, StaticController(), LoadSpec("constant", 100, 10), out,
                          progress=False)
    assert be.calls[:2] == ["deploy", "start"] and be.calls.count("observe") == 10
    assert be.closed >= 1
    on_disk = json.loads(out.read_text())
    assert on_disk == data
    assert data["app"] == "two-tier" and data["backend"] == "fake"
    assert data["controller"] == "static" and data["duration_s"] == 10.0
    assert len(data["timeline"]) == 10 and data["completed"] is True
    assert data["summary"]["mean_cpu"] == pytest.approx(2.5)  # 2.0 + 0.5 for the whole run
    assert data["summary"]["violation_rate"] == 0.0
    assert data["settings"]["controller"]["name"] == "static"
    assert data["settings"]["load"]["pattern"] == "constant"
    assert data["environment"]["wall_s"] >= 0 and "cpu_count" in data["environment"]


def test_allocation_changes_are_applied_and_recorded_for_the_next_interval(tmp_path):
    # 400 req/s * 5 ms = 2 cores of demand; HPA starts at 1 pod of 0.5 core and must scale up.
    be = FakeBackend()
    ctrl = HPAController(time_scale=0.2, initial_replicas=1)  # sync every 3 s
    data = run_experiment(APP, be, ctrl, LoadSpec("constant", 400, 12), tmp_path / "r.json",
                          progress=False)
    cpus = [e["allocation"]["front"]["cpu"] for e in data["timeline"]]
    assert cpus[0] == pytest.approx(0.5)
    assert cpus[3] > cpus[2]  # the decision at t=3 is in force during interval 4
    assert be.calls.count("set_allocation") >= 1
    assert be.allocations[-1].tiers["front"].cpu == pytest.approx(cpus[-1])
    assert data["summary"]["violation_rate"] > 0  # under-provisioned at the start
    assert data["settings"]["controller"]["time_scale"] == 0.2


def test_backend_closed_and_error_propagates_when_the_controller_raises(tmp_path):
    be = FakeBackend()
    out = tmp_path / "r.json"
    with pytest.raises(RuntimeError, match="controller bug"):
        run_experiment(APP, be, Boom(), LoadSpec("constant", 10, 10), out, progress=False)
    assert be.closed >= 1
    assert not out.exists()


def test_ctrl_c_closes_backend_and_writes_partial_result(tmp_path):
    be = FakeBackend(fail_observe_at=5)  # deploy, start, 3 observations, then Ctrl-C
    out = tmp_path / "r.json"
    with pytest.raises(KeyboardInterrupt):
        run_experiment(APP, be, StaticController(), LoadSpec("constant", 10, 10), out,
                       progress=False)
    assert be.closed >= 1
    data = json.loads(out.read_text())
    assert data["completed"] is False and len(data["timeline"]) == 3


def test_report_and_spans_are_written(tmp_path):
    be = FakeBackend()
    run_experiment(APP, be, StaticController(), LoadSpec("diurnal", 100, 6), tmp_path / "r.json",
                   report_html=tmp_path / "r.html", progress=False,
                   spans_out=tmp_path / "spans.jsonl")
    page = (tmp_path / "r.html").read_text()
    assert page.count("data:image/png;base64,") == 4
    assert "two-tier" in page and "p99 ≤ 20 ms" in page and "violation rate" in page
    spans = read_spans(tmp_path / "spans.jsonl")
    assert spans == be.spans()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html", "r.json", "spans.jsonl"]


def test_span_files_bad_input_is_one_line(tmp_path):
    with pytest.raises(LeanstackError, match="no such span file"):
        read_spans(tmp_path / "none.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"resourceSpans": []}\n')
    with pytest.raises(LeanstackError, match=r"bad.jsonl:1: not an OTLP span line"):
        read_spans(tmp_path / "bad.jsonl")
    write_spans([], tmp_path / "empty.jsonl")
    with pytest.raises(LeanstackError, match="holds no spans"):
        read_spans(tmp_path / "empty.jsonl")


def test_make_backend_by_name_and_its_errors(monkeypatch):
    monkeypatch.setitem(runner.BACKENDS, "fake", f"{__name__}:FakeBackend")
    be = make_backend("fake", 0.5, fail_observe_at=None)
    assert isinstance(be, FakeBackend) and be.interval_s == 0.5
    with pytest.raises(LeanstackError, match="unknown backend 'nomad'"):
        make_backend("nomad")
    with pytest.raises(LeanstackError, match="no option 'colour'"):
        make_backend("fake", colour="red")
    with pytest.raises(LeanstackError, match="--interval must be above 0"):
        make_backend("fake", 0)
    monkeypatch.setitem(runner.BACKENDS, "gone", "leanstack.microservices.no_such:Backend")
    with pytest.raises(LeanstackError, match="backend 'gone' is not available"):
        make_backend("gone")


@pytest.mark.cgroups
@needs(local_missing, LOCAL_HOW)
def test_local_run_scales_live_and_leaves_nothing_when_the_controller_raises(tmp_path):
    from leanstack.microservices import cgroups

    be = make_backend("local", 1.0)
    seen: dict[str, list[int]] = {}

    class ScaleThenFail(HPAController):
        def decide(self, history, current):
            if len(history) == 2:  # grow front to 2 worker processes, live
                return current.with_tier("front", cpu=1.0, replicas=2)
            if len(history) == 4:
                seen.update({t: be.cgroups.pids(t) for t in ("front", "db")})
                raise RuntimeError("controller bug")
            return current

    with pytest.raises(RuntimeError, match="controller bug"):
        run_experiment(APP, be, ScaleThenFail(), LoadSpec("constant", 20, 10),
                       tmp_path / "r.json", progress=False)
    assert len(seen["front"]) == 2 and len(seen["db"]) == 1  # the new replica really ran
    run_dirs = [cgroups.CGROUP_ROOT / h / cgroups.PARENT / be.cgroups.run_id
                for h in cgroups.HIERARCHIES]
    assert not any(d.exists() for d in run_dirs)
    for pid in seen["front"] + seen["db"]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_unwritable_output_fails_before_the_run(tmp_path):
    be = FakeBackend()
    with pytest.raises(LeanstackError, match="is a directory"):
        run_experiment(APP, be, StaticController(), LoadSpec("constant", 10, 5), tmp_path,
                       progress=False)
    (tmp_path / "file").write_text("")
    with pytest.raises(LeanstackError, match="cannot create"):
        run_experiment(APP, be, StaticController(), LoadSpec("constant", 10, 5),
                       tmp_path / "r.json", report_html=tmp_path / "file" / "r.html",
                       progress=False)
    assert be.calls == []  # nothing deployed
