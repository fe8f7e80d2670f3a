"""The Ursa demo's profile: the one cached by an earlier demo, else the shipped one, else new."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from leanstack.microservices.app import load_app
from leanstack.ursa import demo
from leanstack.ursa.profile import AppProfile


def _profile(backend: str, rps: float, wall: float) -> AppProfile:
    return AppProfile(app="social-network", backend=backend, percentile="p99", rps=rps,
                      tiers={}, collection_wall_s=wall, collection_backend_s=wall)


@pytest.fixture
def measured(monkeypatch):
    """Replaces profiling with a recorder; returns the list of profiles it 'measured'."""
    made: list[AppProfile] = []

    def fake_profile_app(spec, backend, settings):
        made.append(_profile("local", settings.rps, 99.0))
        return made[-1]

    monkeypatch.setattr(demo, "profile_app", fake_profile_app)
    monkeypatch.setattr(demo, "make_backend", lambda name: name)
    return made


@pytest.fixture
def dirs(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """(the shipped-profiles directory, the demo's output directory), both empty."""
    shipped, out = tmp_path / "shipped", tmp_path / "out"
    shipped.mkdir()
    out.mkdir()
    monkeypatch.setattr(demo, "SHIPPED_PROFILES", shipped)
    return shipped, out


def test_shipped_profile_spares_the_first_run_its_profiling(dirs, measured):
    shipped, out = dirs
    _profile("local", 100.0, 7.0).save(shipped / "social-network-local-100rps.json")
    _profile("local", 50.0, 5.0).save(shipped / "social-network-local-50rps.json")
    spec = load_app("social-network")
    assert demo.demo_profile(out, spec, "local", 100.0).collection_wall_s == 7.0
    assert demo.demo_profile(out, spec, "local", 50.0).collection_wall_s == 5.0
    assert not measured
    # a cached profile from an earlier demo run comes first
    _profile("local", 100.0, 3.0).save(out / "profile-local-100rps.json")
    assert demo.demo_profile(out, spec, "local", 100.0).collection_wall_s == 3.0
    assert demo.demo_profile(out, spec, "local", 50.0).collection_wall_s == 5.0


def test_a_profile_for_another_load_or_backend_is_not_used(dirs, measured):
    shipped, out = dirs
    # files whose names promise this backend and load but whose contents say otherwise
    _profile("sim", 100.0, 7.0).save(shipped / "social-network-local-100rps.json")
    _profile("local", 50.0, 3.0).save(out / "profile-local-100rps.json")
    got = demo.demo_profile(out, load_app("social-network"), "local", 100.0)
    assert got.collection_wall_s == 99.0 and len(measured) == 1
    assert AppProfile.load(out / "profile-local-100rps.json").rps == 100.0  # measured, cached


@pytest.mark.parametrize("rps", [50.0, 100.0])
def test_the_shipped_profiles_cover_every_tier_of_the_demo_app_and_plan(rps):
    from leanstack.ursa.plan import make_plan

    spec = load_app("social-network")
    profile = AppProfile.load(demo.SHIPPED_PROFILES / f"social-network-local-{rps:g}rps.json")
    assert (profile.app, profile.backend, profile.rps) == ("social-network", "local", rps)
    assert set(profile.tiers) == set(spec.services)
    plan = make_plan(spec, profile)
    assert set(plan.tiers) == set(spec.services) and plan.cpu_per_rps > 0


@pytest.mark.parametrize("backend", ["local", "sim"])
def test_the_demo_runs_ursa_with_the_period_floor_on_real_processes_only(
        backend, tmp_path, monkeypatch, capsys):
    runs = []

    def fake_run(spec, be, controller, load, out, report_html=None):
        runs.append((controller, load))
        return {"summary": {"violation_rate": 0.0, "violation_rate_after_warmup": 0.0,
                            "mean_cpu": 1.0, "decision_ms_median": 0.1}}

    monkeypatch.setattr(demo, "demo_backend", lambda: backend)
    monkeypatch.setattr(demo, "make_backend", lambda name: name)
    monkeypatch.setattr(demo, "run_experiment", fake_run)
    shipped = demo.SHIPPED_PROFILES / "social-network-local-50rps.json"
    if backend == "sim":  # no sim profile ships: hand it the local one, relabelled, as a cache
        relabelled = dataclasses.replace(AppProfile.load(shipped), backend="sim")
        relabelled.save(tmp_path / "profile-sim-50rps.json")
    demo.run_demo(tmp_path)
    (controller, load), = runs
    assert load.rps == 50.0
    floor = backend == "local"
    assert (controller.throttle_risk > 0) == floor and (controller.throttle_guard > 0) == floor
    assert ("controller options for real processes" in capsys.readouterr().out) == floor
