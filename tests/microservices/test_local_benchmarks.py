"""The local-backend benchmarks' bookkeeping, without real processes: seed and option parsing,
the across-seeds summary, the result rewritten after every run, and Ursa's cached profile
(reused when it matches, a one-line error when it does not)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from leanstack.errors import LeanstackError
from leanstack.microservices.app import load_app
from leanstack.microservices.load import LoadSpec
from leanstack.microservices.observation import Allocation
from leanstack.microservices.sim import SimBackend
from leanstack.ursa.profile import AppProfile, ProfileSettings, TierProfile

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import local_runs  # noqa: E402
import sim_fidelity  # noqa: E402
import ursa_local  # noqa: E402

SN = load_app("social-network")


def _args(*argv: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    local_runs.add_arguments(ap, ursa_local.CONTROLLERS, "hpa,ursa")
    return ap.parse_args(list(argv))


def _row(seed: int, controller: str, violations: float, late: float | None, cpu: float) -> dict:
    return {"seed": seed, "controller": controller, "violation_rate": violations,
            "violation_rate_after_warmup": late, "mean_cpu": cpu, "decision_ms_median": 0.1,
            "loadavg_before": [0.1, 0.2, 0.3], "loadavg_after": [0.9, 0.4, 0.3]}


def test_seeds_parse_in_order_and_bad_lists_are_one_line_errors():
    assert local_runs.parse_seeds("0,1,2") == [0, 1, 2]
    assert local_runs.parse_seeds(" 7, 3") == [7, 3]
    for bad, words in (("0,x", "'x' is not a whole number"), ("-1", "'-1' is not"),
                       ("", "'' is not"), ("0,1,0", "repeats seed 0")):
        with pytest.raises(LeanstackError, match=words) as e:
            local_runs.parse_seeds(bad)
        assert "\n" not in str(e.value) and "--seeds" in str(e.value)


def test_controllers_are_a_subset_given_once():
    assert local_runs.parse_controllers("ursa,static", ursa_local.CONTROLLERS) == \
        ["ursa", "static"]
    for bad in ("hpa,sinan", "hpa,hpa", " , "):
        with pytest.raises(LeanstackError, match="static, hpa, ursa"):
            local_runs.parse_controllers(bad, ursa_local.CONTROLLERS)


def test_settings_default_to_five_minute_runs_three_seeds_and_a_per_app_result():
    s = local_runs.settings_from(_args("--app", "hotel-reservation"), "ursa_local",
                                 ursa_local.CONTROLLERS)
    assert (s.app.name, s.seeds, s.duration_s, s.controllers) == \
        ("hotel-reservation", [0, 1, 2], 300.0, ["hpa", "ursa"])
    assert s.out == local_runs.RESULTS / "ursa_local_hotel-reservation.json"
    assert s.hpa_options == {"time_scale": "0.1"}
    assert s.load(1).pattern == "diurnal" and s.load(1).seed == 1
    assert not np.array_equal(s.load(0).arrival_times(), s.load(1).arrival_times())


@pytest.mark.parametrize(("argv", "words"), [
    (("--backend-opt", "cfs_period_ms"), "--backend-opt 'cfs_period_ms' is not KEY=VALUE"),
    (("--backend-opt", "period=20"), "has no option 'period'"),
    (("--backend-opt", "cfs_period_ms=abc"), "expects a number"),
    (("--backend-opt", "cfs_burst=2"), "burst must be a fraction"),
    (("--hpa-opt", "initial_replicas=9"), "outside"),
    (("--hpa-opt", "x"), "--hpa-opt 'x' is not KEY=VALUE"),
    (("--duration", "0"), "--duration must be above 0"),
    (("--app", "no-such-app"), "no-such-app"),
])
def test_bad_options_fail_in_one_line_before_any_run(argv, words):
    with pytest.raises(LeanstackError, match=words) as e:
        local_runs.settings_from(_args(*argv), "ursa_local", ursa_local.CONTROLLERS)
    assert "\n" not in str(e.value)


def test_summary_gives_mean_and_per_seed_values_and_cpu_relative_to_hpa_on_the_same_seed():
    rows = [_row(0, "hpa", 0.02, 0.0, 8.0), _row(0, "ursa", 0.04, 0.02, 4.0),
            _row(1, "hpa", 0.00, None, 10.0), _row(1, "ursa", 0.02, None, 6.0)]
    s = local_runs.summarize(rows)
    assert list(s) == ["hpa", "ursa"] and s["ursa"]["seeds"] == [0, 1]
    assert s["ursa"]["violation_rate"] == {"mean": pytest.approx(0.03),
                                           "per_seed": {"0": 0.04, "1": 0.02}}
    assert s["ursa"]["violation_rate_after_warmup"]["mean"] == 0.02  # seed 1 has none
    assert s["ursa"]["mean_cpu"]["mean"] == 5.0
    assert s["ursa"]["cpu_vs_hpa"] == {"mean": pytest.approx(0.55),
                                       "per_seed": {"0": 0.5, "1": 0.6}}
    assert "cpu_vs_hpa" not in s["hpa"]
    assert local_runs.summarize([_row(0, "ursa", 0.1, 0.1, 3.0)])["ursa"]["cpu_vs_hpa"] == \
        {"mean": None, "per_seed": {}}  # no HPA run to compare with


def test_the_result_is_rewritten_after_every_run_and_an_interrupt_keeps_what_was_measured(
        tmp_path, monkeypatch, capsys):
    s = local_runs.settings_from(_args("--seeds", "0,1", "--out", str(tmp_path / "r.json")),
                                 "ursa_local", ursa_local.CONTROLLERS)
    measured = []

    def fake_run(settings, controller, seed, label):
        if seed == 1 and label == "ursa":
            raise KeyboardInterrupt
        measured.append((seed, label))
        return _row(seed, label, 0.01 * len(measured), 0.0, 2.0 * len(measured))

    monkeypatch.setattr(local_runs, "run_one", fake_run)
    with pytest.raises(KeyboardInterrupt):
        local_runs.run_benchmark("ursa_local", s, {"hpa": object, "ursa": object},
                                 {"profile": {"reused": True}})
    kept = json.loads((tmp_path / "r.json").read_text())
    assert measured == [(0, "hpa"), (0, "ursa"), (1, "hpa")]
    assert [(r["seed"], r["controller"]) for r in kept["runs"]] == measured
    assert kept["completed"] is False and kept["profile"] == {"reused": True}
    assert kept["load"]["seeds"] == [0, 1] and kept["summary"]["ursa"]["seeds"] == [0]
    assert kept["environment"]["command"] and "timestamp" in kept["environment"]

    monkeypatch.setattr(local_runs, "run_one",
                        lambda settings, c, seed, label: _row(seed, label, 0.0, 0.0, 1.0))
    done = local_runs.run_benchmark("ursa_local", s, {"hpa": object, "ursa": object}, {})
    assert done["completed"] is True and len(done["runs"]) == 4
    local_runs.print_tables(done)
    out = capsys.readouterr().out
    assert "| 1 | ursa | 0.0% | 0.0% | 1.00 | 1.00 |" in out
    assert "0.10 -> 0.90" in out and "| ursa | 0.0% (0.0% / 0.0%) |" in out


def _profile(app: str = "social-network", backend: str = "local",
             settings: ProfileSettings | None = None, **backend_options: str) -> AppProfile:
    cfg = settings or ProfileSettings.fast(100.0)
    tiers = {t: TierProfile(t, [(10.0, 1.0), (50.0, 4.0)], 5.0, "bound")
             for t in load_app(app).services}
    return AppProfile(app, backend, "p99", cfg.rps, tiers, 42.0, 60.0,
                      {**asdict(cfg), "interval_s": 1.0, "backend_options": backend_options})


def test_a_matching_cached_profile_is_reused_without_profiling(tmp_path, monkeypatch):
    path = tmp_path / "p.json"
    _profile().save(path)
    monkeypatch.setattr(ursa_local, "profile_app", lambda *a, **k: pytest.fail("re-profiled"))
    profile, reused = ursa_local.cached_or_new_profile(
        SN, path, ursa_local.profile_settings(100.0, True, None), {})
    assert reused and profile.collection_wall_s == 42.0


def test_a_missing_profile_is_measured_once_saved_with_its_backend_options_then_reused(
        tmp_path, monkeypatch):
    path = tmp_path / "p.json"
    calls = []

    def fake_profile(app, backend, settings, progress):
        calls.append(backend.cfs_period_us)
        return _profile(settings=settings)

    monkeypatch.setattr(ursa_local, "profile_app", fake_profile)
    wanted = ursa_local.profile_settings(100.0, False, 4)
    assert not ursa_local.cached_or_new_profile(SN, path, wanted, {"cfs_period_ms": "20"})[1]
    assert ursa_local.cached_or_new_profile(SN, path, wanted, {"cfs_period_ms": "20"})[1]
    assert calls == [20000]
    saved = json.loads(path.read_text())["settings"]
    assert saved["backend_options"] == {"cfs_period_ms": "20"} and saved["step_intervals"] == 4


@pytest.mark.parametrize(("profile", "app", "rps", "fast", "opts", "words"), [
    (_profile(), "hotel-reservation", 100.0, True, {},
     "is a profile of app 'social-network', not 'hotel-reservation'"),
    (_profile(backend="sim"), "social-network", 100.0, True, {}, "on the 'sim' backend"),
    (_profile(), "social-network", 80.0, True, {}, "rps=100.0; this run asks rps=80.0"),
    (_profile(), "social-network", 100.0, False, {}, "parallel=64, start_utilization=0.2, "
                                                     "step_intervals=3; this run asks parallel=1"),
    (_profile(), "social-network", 100.0, True, {"cfs_burst": "1"},
     "backend options none, this run uses {'cfs_burst': '1'}"),
])
def test_a_cached_profile_measured_otherwise_is_a_one_line_error(tmp_path, profile, app, rps,
                                                                 fast, opts, words):
    path = tmp_path / "p.json"
    profile.save(path)
    with pytest.raises(LeanstackError, match=words) as e:
        ursa_local.cached_or_new_profile(load_app(app), path,
                                         ursa_local.profile_settings(rps, fast, None), opts)
    assert "\n" not in str(e.value) and "pass another --profile" in str(e.value)


def test_ursa_options_are_typed_like_the_cli_and_bad_ones_are_one_line_errors():
    assert ursa_local.ursa_options(["headroom=0.6", "reprofile=false"]) == \
        {"headroom": 0.6, "reprofile": False}
    for bad, words in ((["headroom"], "--opt 'headroom' is not KEY=VALUE"),
                       (["headroom=abc"], "expects a number"),
                       (["speed=2"], "has no option 'speed'"),
                       (["plan=p.json"], "plans from its own profile")):
        with pytest.raises(LeanstackError, match=words) as e:
            ursa_local.ursa_options(bad)
        assert "\n" not in str(e.value)
    with pytest.raises(LeanstackError, match="--profile-steps must be at least 1"):
        ursa_local.profile_settings(100.0, False, 0)


def test_the_script_reports_bad_input_in_one_line_and_exit_code_2(capsys, tmp_path):
    assert ursa_local.main(["--seeds", "0,a", "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --seeds '0,a'")
    assert not (tmp_path / "r.json").exists()


def test_sinan_models_are_checked_and_described_before_any_run(tmp_path, capsys):
    import sinan_local
    from leanstack.sinan.model import shipped_model_dir

    shipped = sinan_local.model_record(SN, None)
    assert shipped["model"] == "shipped" and shipped["trained_on"] == "sim"
    assert 0.5 < shipped["auc"] <= 1 and shipped["collection_wall_s"] > 0
    with pytest.raises(LeanstackError, match="trained for app 'hotel-reservation'"):
        sinan_local.model_record(SN, shipped_model_dir("hotel-reservation"))
    out = str(tmp_path / "r.json")
    assert sinan_local.main(["--controllers", "hpa,sinan,sinan-sim", "--out", out]) == 2
    assert "same shipped model" in capsys.readouterr().err
    assert sinan_local.main(["--model", str(tmp_path / "none"), "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no Sinan model" in err and not Path(out).exists()


def test_hpa_runs_are_reused_from_an_earlier_result_only_when_it_ran_the_same_thing(
        tmp_path, monkeypatch):
    first = tmp_path / "ursa.json"
    monkeypatch.setattr(local_runs, "run_one",
                        lambda settings, c, seed, label: _row(seed, label, 0.01, 0.0, 8.0))
    local_runs.run_benchmark("ursa_local", local_runs.settings_from(
        _args("--seeds", "0,1", "--out", str(first)), "ursa_local", ursa_local.CONTROLLERS),
        {"hpa": object, "ursa": object}, {})

    ran = []
    monkeypatch.setattr(local_runs, "run_one", lambda settings, c, seed, label:
                        ran.append((seed, label)) or _row(seed, label, 0.0, 0.0, 4.0))
    s = local_runs.settings_from(_args("--seeds", "1", "--hpa-from", str(first), "--out",
                                       str(tmp_path / "again.json")),
                                 "ursa_local", ursa_local.CONTROLLERS)
    result = local_runs.run_benchmark("ursa_local", s, {"hpa": object, "ursa": object}, {})
    assert ran == [(1, "ursa")]
    assert result["runs"][0]["reused_from"] == "ursa.json" and result["runs"][0]["mean_cpu"] == 8
    assert result["summary"]["ursa"]["cpu_vs_hpa"]["mean"] == 0.5

    for argv, words in ((("--seeds", "2"), r"no HPA run for seed\(s\) 2"),
                        (("--duration", "200"), "duration_s=300.0; this run asks duration_s=200"),
                        (("--backend-opt", "cfs_period_ms=20"), "backend_options={}"),
                        (("--controllers", "ursa"), "leaves hpa out")):
        with pytest.raises(LeanstackError, match=words) as e:
            local_runs.settings_from(_args("--hpa-from", str(first), *argv), "ursa_local",
                                     ursa_local.CONTROLLERS)
        assert "\n" not in str(e.value)
    with pytest.raises(LeanstackError, match="no such local benchmark result"):
        local_runs.settings_from(_args("--hpa-from", str(tmp_path / "none.json")), "ursa_local",
                                 ursa_local.CONTROLLERS)


def test_profile_speed_repeats_reverse_the_settings_order_and_reject_unknown_settings(
        monkeypatch, tmp_path, capsys):
    import ursa_profile_speed

    calls = []

    def fake_profile_and_plan(app, name, args, repeat):
        calls.append((repeat, name, args.rps))
        return {"name": name, "repeat": repeat, "collection_wall_s": 1.0,
                "collection_backend_s": 1.0, "plan_cpu_per_100rps": 2.0, "runs": [],
                "host_probe_ms": [{"min": 8.0, "median": 8.5}] * 2}

    monkeypatch.setattr(ursa_profile_speed, "profile_and_plan", fake_profile_and_plan)
    monkeypatch.setattr(ursa_profile_speed, "RESULTS", tmp_path)
    monkeypatch.setattr(sys, "argv", ["ursa_profile_speed.py", "--settings", "fast,shaped",
                                      "--repeats", "3", "--rps", "50", "--suffix", "_t"])
    ursa_profile_speed.main()
    assert calls == [(0, "fast", 50.0), (0, "shaped", 50.0), (1, "shaped", 50.0),
                     (1, "fast", 50.0), (2, "fast", 50.0), (2, "shaped", 50.0)]
    saved = json.loads((tmp_path / "ursa_profile_speed_sim_t.json").read_text())
    assert [(r["repeat"], r["name"]) for r in saved["profiles"]] == [c[:2] for c in calls]
    assert saved["rps"] == 50.0
    monkeypatch.setattr(sys, "argv", ["ursa_profile_speed.py", "--settings", "fast,quick"])
    with pytest.raises(SystemExit):
        ursa_profile_speed.main()
    assert "--settings takes before, fast, shaped (got quick)" in capsys.readouterr().err


def test_fidelity_summary_gives_the_mean_throttle_length_and_none_without_throttling():
    load = LoadSpec("poisson", rps=150, duration_s=8, seed=0)
    roomy = sim_fidelity.summarise(sim_fidelity.run(
        SimBackend(interval_s=1.0, seed=0), SN, Allocation.static_max(SN), load)[0])
    assert roomy["throttled_periods"] == 0 and sim_fidelity.throttle_length_ms(roomy) is None
    tight = sim_fidelity.scaled(SN, roomy["tiers"], 0.95)
    squeezed = sim_fidelity.summarise(sim_fidelity.run(
        SimBackend(interval_s=1.0, seed=0), SN, tight, load)[0])
    length = sim_fidelity.throttle_length_ms(squeezed)
    assert squeezed["throttled_periods"] > 0
    assert length == round(1000 * squeezed["throttled_s"] / squeezed["throttled_periods"], 1)
    assert 0 < length <= 100  # a tier is throttled at most until its 100 ms period ends
