"""The ``leanstack micro run / report / calibrate`` commands: bad input is one line with a
non-zero exit; a short simulator run writes a valid result and report; spans feed calibration."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .helpers import run_cli

RUN = ("micro", "run", "--app", "social-network", "--backend", "sim", "--quiet")


@pytest.mark.parametrize("args, message", [
    (("--controller", "magic", "--out", "r.json"), "unknown controller 'magic'"),
    (("--backend", "cloud", "--out", "r.json"), "unknown backend 'cloud'"),
    (("--load", "bursty", "--out", "r.json"), "unknown load pattern 'bursty'"),
    (("--rps", "fast", "--out", "r.json"), "Invalid value for '--rps'"),
    (("--rps", "-5", "--out", "r.json"), "--rps must be above 0"),
    (("--duration", "10",), "Missing option '--out'"),
    (("--load", "trace", "--out", "r.json"), "needs a trace file"),
    (("--controller", "static", "--time-scale", "0.1", "--out", "r.json"),
     "has no option 'time_scale' — it takes no options"),
    (("--controller", "hpa", "--opt", "plan=p.json", "--out", "r.json"), "has no option 'plan'"),
    (("--controller", "hpa", "--opt", "tolerance", "--out", "r.json"), "is not KEY=VALUE"),
    (("--interval", "0", "--out", "r.json"), "--interval must be above 0"),
    (("--seed", "-1", "--out", "r.json"), "--seed must be a whole number >= 0"),
    (("--rps", "inf", "--out", "r.json"), "--rps must be above 0"),
    (("--rps", "1e9", "--duration", "600", "--out", "r.json"), "one run takes at most 5e+07"),
    (("--controller", "hpa", "--opt", "min_replicas=1.5", "--out", "r.json"),
     "option 'min_replicas' expects a whole number, got '1.5'"),
    (("--controller", "ursa", "--opt", "headroom=abc", "--out", "r.json"),
     "option 'headroom' expects a number, got 'abc'"),
    (("--controller", "ursa", "--opt", "window=1.5", "--out", "r.json"),
     "option 'window' expects a whole number"),
])
def test_run_bad_input_is_one_line_and_nonzero(monkeypatch, capsys, tmp_path, args, message):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(monkeypatch, capsys, *RUN, *args)
    assert code != 0
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "r.json").exists()


def test_unknown_app_and_missing_files_are_one_line(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "micro", "run", "--app", "no-such-app",
                           "--out", str(tmp_path / "r.json"))
    assert code == 2 and "unknown app 'no-such-app'" in err and err.count("\n") == 1
    code, _, err = run_cli(monkeypatch, capsys, "micro", "calibrate", "--app", "social-network",
                           "--spans", str(tmp_path / "none.jsonl"), "--out",
                           str(tmp_path / "c.json"))
    assert code == 2 and "no such span file" in err and err.count("\n") == 1
    code, _, err = run_cli(monkeypatch, capsys, "micro", "report", str(tmp_path / "none.json"),
                           "--out", str(tmp_path / "r.html"))
    assert code == 2 and "no such result file" in err and err.count("\n") == 1


def test_real_entry_point_exit_code_and_single_line():
    p = subprocess.run([sys.executable, "-m", "leanstack.cli", "micro", "run", "--app",
                        "social-network", "--controller", "nope", "--out", "x.json"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert p.stderr.strip().startswith("error: unknown controller 'nope'")
    assert p.stderr.count("\n") == 1


def test_sim_run_writes_result_report_and_spans_that_calibrate(monkeypatch, capsys, tmp_path):
    pytest.importorskip("leanstack.microservices.sim")
    res, html, spans = tmp_path / "r.json", tmp_path / "r.html", tmp_path / "s.jsonl"
    code, out, err = run_cli(monkeypatch, capsys, *RUN, "--controller", "hpa", "--load",
                             "diurnal", "--rps", "80", "--duration", "20", "--time-scale", "0.1",
                             "--out", str(res), "--report", str(html), "--spans", str(spans))
    assert code == 0, err
    assert "violation rate" in out and str(res) in out
    data = json.loads(res.read_text())
    assert data["backend"] == "sim" and data["controller"] == "hpa"
    assert len(data["timeline"]) == 20 and data["duration_s"] == 20
    assert data["summary"]["requests"] > 1000
    assert set(data["summary"]["p99_ms"]) == {"read-home-timeline", "read-user-timeline",
                                               "compose-post"}
    assert data["settings"]["controller"]["sync_period_s"] == pytest.approx(1.5)
    assert data["environment"]["command"].startswith("leanstack micro run")
    page = html.read_text()
    assert page.startswith("<!doctype html>") and page.count("data:image/png;base64,") == 4
    assert "time_scale" in page

    code, out, err = run_cli(monkeypatch, capsys, "micro", "report", str(res), "--out",
                             str(tmp_path / "again.html"))
    assert code == 0 and (tmp_path / "again.html").read_text().count("<img") == 4

    calib = tmp_path / "calib.json"
    code, out, err = run_cli(monkeypatch, capsys, "micro", "calibrate", "--app",
                             "social-network", "--spans", str(spans), "--out", str(calib))
    assert code == 0, err
    model = json.loads(calib.read_text())
    assert "home-timeline.read" in model["endpoints"]


def test_demo_falls_back_to_the_simulator_when_cgroups_are_not_writable(monkeypatch, capsys,
                                                                        tmp_path):
    pytest.importorskip("leanstack.microservices.sim")
    from leanstack.errors import LeanstackError
    from leanstack.microservices import cgroups

    def not_writable():
        raise LeanstackError("cgroup hierarchy is not writable — run as root")

    monkeypatch.setattr(cgroups, "check_available", not_writable)
    code, out, err = run_cli(monkeypatch, capsys, "demo", "--only", "micro,ursa", "--duration",
                             "15", "--out-dir", str(tmp_path / "demo"))
    assert code == 0, err
    assert "not writable" in err and "simulator instead" in err
    assert "on the sim backend" in out and "x0.0167" in out
    report = tmp_path / "demo" / "micro" / "report.html"
    assert f"report: {report.resolve()}" in out
    data = json.loads((tmp_path / "demo" / "micro" / "result.json").read_text())
    assert data["controller"] == "hpa" and data["settings"]["load"]["pattern"] == "diurnal"
    ursa = json.loads((tmp_path / "demo" / "ursa" / "result.json").read_text())
    assert ursa["controller"] == "ursa" and ursa["settings"]["load"] == data["settings"]["load"]
    rows = [line.split()[0] for line in out.splitlines()
            if line.startswith(("hpa ", "ursa ")) and line.rstrip()[-1].isdigit()]
    assert rows == ["hpa", "ursa"]  # side by side
    assert (tmp_path / "demo" / "ursa" / "profile-sim-50rps.json").is_file()  # cached for next time


def test_demo_reports_a_broken_section_and_runs_the_rest(monkeypatch, capsys, tmp_path):
    from leanstack import demo

    monkeypatch.setitem(demo.SECTIONS, "broken", ("leanstack.no_such_part:run_demo", "nothing"))
    monkeypatch.setitem(demo.SECTIONS, "micro", ("os.path:isdir",
                                                 "checks its folder"))
    code, out, err = run_cli(monkeypatch, capsys, "demo", "--only", "broken,micro",
                             "--out-dir", str(tmp_path))
    assert code == 2
    assert "broken failed: this section is not available" in out
    assert "micro took" in out and "demo section(s) broken failed" in err


def test_opt_values_reach_the_controller_typed(monkeypatch, capsys, tmp_path):
    out = tmp_path / "r.json"
    code, _, err = run_cli(monkeypatch, capsys, *RUN, "--controller", "hpa", "--duration", "3",
                           "--rps", "20", "--opt", "target-utilization=0.5", "--opt",
                           "max_replicas=2", "--out", str(out))
    assert code == 0, err
    data = json.loads(out.read_text())
    described = data["settings"]["controller"]
    assert described["target_utilization"] == 0.5 and described["max_replicas"] == 2
    assert data["summary"]["decision_ms_median"] >= 0
    assert all("decision_ms" in e for e in data["timeline"])
