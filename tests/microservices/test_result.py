"""The ExperimentResult summary on a hand-made timeline, atomic writes, and result loading."""

from __future__ import annotations

import json

import pytest

from leanstack.atomic import write_json
from leanstack.errors import LeanstackError
from leanstack.microservices.result import (
    build_result,
    class_violated,
    environment,
    load_result,
    mean_cpu,
    summarize,
    violation_rate,
)


def cls(p99: float, completed: int = 100, errors: int = 0, sla: float = 50.0,
        key: str = "p99") -> dict:
    lat = {"p50": p99 / 4, "p90": p99 / 2, "p95": p99 / 1.5, "p99": p99, "p99.9": p99 * 1.5}
    return {"completed": completed, "errors": errors, "throughput_rps": float(completed),
            "latency_ms": lat if completed else {}, "sla_ms": sla, "sla_key": key}


def entry(t: float, classes: dict, cpu: dict[str, float], dt: float = 1.0,
          used: float = 0.5) -> dict:
    return {"t": t, "interval_s": dt, "offered_rps": 100.0, "classes": classes,
            "tiers": {n: {"cpu_used": used} for n in cpu},
            "allocation": {n: {"cpu": c, "replicas": 1} for n, c in cpu.items()}}


TIMELINE = [
    entry(1, {"a": cls(40), "b": cls(90, sla=100)}, {"x": 3.0, "y": 1.0}),  # fine; 4 cores
    entry(2, {"a": cls(60), "b": cls(90, sla=100)}, {"x": 0.5, "y": 0.5}),  # a violates; 1 core
    entry(3, {"a": cls(0, completed=0), "b": cls(0, completed=0)}, {"x": 1.0, "y": 1.0}),  # idle
    entry(5, {"a": cls(0, completed=0, errors=5), "b": cls(90, sla=100)}, {"x": 0.5, "y": 0.5},
          dt=2.0),  # every request of a failed: a violates; 1 core for 2 s
]


def test_violation_rate_counts_intervals_with_any_class_over_its_sla():
    # Intervals 2 and 4 violate; interval 3 had no traffic and is left out: 2 of 3.
    assert violation_rate(TIMELINE) == pytest.approx(2 / 3)


def test_violations_are_also_reported_without_the_first_minute():
    assert summarize(TIMELINE)["violation_rate_after_warmup"] is None  # all in the first minute
    start_up = [entry(t, {"a": cls(60 if t <= 60 else 40)}, {"x": 1.0}) for t in range(1, 121)]
    s = summarize(start_up)
    assert s["violation_rate"] == pytest.approx(0.5)
    assert s["violation_rate_after_warmup"] == 0.0
    late = [entry(t, {"a": cls(60 if t > 90 else 40)}, {"x": 1.0}) for t in range(1, 121)]
    assert summarize(late)["violation_rate_after_warmup"] == pytest.approx(0.5)


def test_mean_cpu_is_time_weighted_over_all_intervals():
    # (4 * 1 + 1 * 1 + 2 * 1 + 1 * 2) / 5 s — the 2 s interval counts twice.
    assert mean_cpu(TIMELINE) == pytest.approx(9 / 5)


def test_summary_per_class_numbers():
    s = summarize(TIMELINE)
    assert s["violation_rate"] == pytest.approx(2 / 3)
    assert s["intervals"] == 4 and s["intervals_measured"] == 3 and s["intervals_violated"] == 2
    assert s["requests"] == 100 + 100 + 5 + 300 and s["errors"] == 5
    a, b = s["classes"]["a"], s["classes"]["b"]
    assert a["violation_rate"] == pytest.approx(2 / 3) and b["violation_rate"] == 0.0
    assert a["p99_ms"] == pytest.approx(50.0)  # median of 40 and 60 (interval 4 has none)
    assert a["p99_worst_ms"] == 60.0 and s["p99_ms"] == {"a": 50.0, "b": 90.0}
    assert s["mean_cpu_used"] == pytest.approx(2 * 0.5)  # two tiers at 0.5 core each


def test_failed_requests_count_as_infinitely_slow():
    # p99 allows 1% failures: 5 of 100 (5%) violates even with fast completions; 5 of 1000 doesn't.
    assert class_violated(cls(10, completed=95, errors=5)) is True
    assert class_violated(cls(10, completed=995, errors=5)) is False
    # p99.9 allows only 0.1%.
    assert class_violated(cls(10, completed=995, errors=5, key="p99.9")) is True
    assert class_violated(cls(0, completed=0, errors=0)) is None


def test_sla_key_selects_the_percentile_compared():
    # p99 = 40 ms is within 50, but p99.9 = 60 ms is over it.
    assert class_violated(cls(40, key="p99")) is False
    assert class_violated(cls(40, key="p99.9")) is True


def test_empty_timeline_is_all_zero():
    assert violation_rate([]) == 0.0 and mean_cpu([]) == 0.0
    assert summarize([])["requests"] == 0


def test_result_roundtrip_atomic_and_checked(tmp_path):
    env = environment(1.5, command=["/some/bin/leanstack", "micro", "run", "--app", "x y"])
    assert env["command"] == "leanstack micro run --app 'x y'"  # no install path, shell-quoted
    assert env["cpu_count"] >= 1 and env["packages"]["numpy"]
    r = build_result("app", "sim", "static", 1.0, TIMELINE, {"controller": {}}, env)
    assert r["duration_s"] == 5.0 and r["summary"]["violation_rate"] == pytest.approx(2 / 3)
    path = write_json(tmp_path / "sub" / "r.json", r)
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temp file left behind
    assert load_result(path)["timeline"] == TIMELINE

    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(LeanstackError, match="not valid JSON"):
        load_result(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"app": "x"}))
    with pytest.raises(LeanstackError, match="other.json: backend: field required"):
        load_result(tmp_path / "other.json")
    with pytest.raises(LeanstackError, match="no such result"):
        load_result(tmp_path / "absent.json")


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    path = tmp_path / "r.json"
    write_json(path, {"v": 1})
    with pytest.raises(TypeError):
        write_json(path, {"v": object()})
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda r: r["summary"].pop("classes"), "summary.classes: field required"),
    (lambda r: r["timeline"][1].pop("allocation"), "timeline.1.allocation: field required"),
    (lambda r: r["timeline"][0]["classes"]["a"].update(completed=-3), "timeline.0.classes.a"),
    (lambda r: r["timeline"][0]["classes"]["a"].update(sla_key="p75"), "sla_key"),
    (lambda r: r["timeline"][2].update(interval_s=0), "timeline.2.interval_s"),
    (lambda r: r.update(timeline="none"), "timeline: input should be a valid list"),
])
def test_result_missing_or_bad_nested_keys_are_one_line(tmp_path, monkeypatch, capsys,
                                                        mutate, field):
    from .helpers import run_cli

    r = build_result("app", "sim", "static", 1.0, json.loads(json.dumps(TIMELINE)), {},
                     environment(1.0, command=[]))
    mutate(r)
    path = write_json(tmp_path / "r.json", r)
    with pytest.raises(LeanstackError, match=field.replace(".", r"\.")) as e:
        load_result(path)
    assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)
    code, _, err = run_cli(monkeypatch, capsys, "micro", "report", str(path), "--out",
                           str(tmp_path / "r.html"))
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "r.html").exists()


def test_decision_percentiles_use_the_one_percentile_rule():
    import numpy as np

    timeline = [{**TIMELINE[0], "decision_ms": float(ms)} for ms in range(1, 11)]
    s = summarize(timeline)
    assert s["decision_ms_median"] == pytest.approx(5.5)
    assert s["decision_ms_p90"] == pytest.approx(np.percentile(np.arange(1, 11), 90))  # 9.1
    assert summarize(TIMELINE)["decision_ms_p90"] is None


def test_one_sla_rule_for_results_observations_and_sinan():
    from leanstack.microservices.observation import ClassStats, Observation
    from leanstack.sinan.features import violated

    for stats in (cls(40), cls(60), cls(10, completed=95, errors=5), cls(0, completed=0),
                  cls(40, key="p99.9"), cls(0, completed=0, errors=3)):
        as_obs = ClassStats(**stats)
        obs = Observation(t=1.0, interval_s=1.0, classes={"a": as_obs}, tiers={})
        assert bool(class_violated(stats)) == as_obs.violated == violated(obs), stats
