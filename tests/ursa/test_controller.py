"""Ursa's online controller on the simulator: SLAs met with little CPU, a tight class, drift."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from leanstack.errors import LeanstackError
from leanstack.microservices.app import parse_app
from leanstack.microservices.controllers import make_controller
from leanstack.microservices.load import LoadSpec
from leanstack.microservices.runner import run_experiment
from leanstack.microservices.sim import SimBackend
from leanstack.ursa.controller import UrsaController
from leanstack.ursa.plan import make_plan
from leanstack.ursa.profile import ProfileSettings, profile_app

from .conftest import SHOP, shop


def _run(app, ctrl, tmp_path, rps=150.0, duration=90.0, pattern="poisson", seed=5):
    load = LoadSpec(pattern, rps, duration, seed=seed)
    return run_experiment(app, SimBackend(seed=seed), ctrl, load, tmp_path / "r.json",
                          progress=False)


def test_meets_slas_with_far_less_cpu_than_static(tmp_path, shop_profile):
    app = shop()
    result = _run(app, UrsaController(make_plan(app, shop_profile)), tmp_path,
                  pattern="diurnal")
    s = result["summary"]
    assert s["violation_rate"] <= 0.02
    assert s["mean_cpu"] < 0.5 * sum(t.max_cpu for t in app.services.values())
    assert s["decision_ms_median"] is not None and s["decision_ms_median"] < 50
    cpus = [e["allocation"]["front"]["cpu"] for e in result["timeline"]]
    assert max(cpus[len(cpus) // 3:]) > min(cpus[len(cpus) // 3:])  # it follows the load


def test_a_much_tighter_class_is_met(tmp_path, social):
    data = tomllib.loads(Path(social.source).read_text())
    data["classes"]["read-user-timeline"]["sla"]["ms"] = 15.0  # others: 50 and 100 ms
    app = parse_app(data)
    profile = profile_app(app, SimBackend(seed=2), ProfileSettings(rps=300), progress=False)
    plan = make_plan(app, profile)
    assert plan.classes["read-user-timeline"].planned_ms <= 15.0 * 0.8
    s = _run(app, UrsaController(plan), tmp_path, rps=300, duration=120)["summary"]
    tight = s["classes"]["read-user-timeline"]
    assert tight["violation_rate"] <= 0.02 and tight["p99_ms"] <= 15.0
    assert s["violation_rate"] <= 0.03


def _slower_catalog():
    data = tomllib.loads(SHOP)
    data["services"]["catalog"]["endpoints"]["list"]["cpu_ms"] = 2.5  # was 1.0
    return parse_app(data)


def test_drifting_tier_is_reprofiled_and_violations_drop(tmp_path, shop_profile):
    plan = make_plan(shop(), shop_profile)  # profiled before the catalog got slower
    app = _slower_catalog()
    fixed = UrsaController(plan, reprofile=False)
    adapting = UrsaController(plan)
    before = _run(app, fixed, tmp_path)["summary"]["violation_rate"]
    after = _run(app, adapting, tmp_path)["summary"]["violation_rate"]
    assert [e["tier"] for e in adapting.events][:1] == ["catalog"]
    assert adapting.thresholds()["catalog"] < plan.tiers["catalog"].threshold
    assert before > 0.1 and after < before / 2


def test_bad_plans_are_one_line_errors(tmp_path, shop_profile, social):
    with pytest.raises(LeanstackError, match="needs a plan"):
        make_controller("ursa")
    ctrl = UrsaController(make_plan(shop(), shop_profile))
    with pytest.raises(LeanstackError, match="plan is for app 'shop', not 'social-network'"):
        ctrl.reset(social, 1.0)
    with pytest.raises(LeanstackError, match="no such Ursa plan"):
        make_controller("ursa", plan=str(tmp_path / "none.json"))
    with pytest.raises(LeanstackError, match="headroom"):
        UrsaController(make_plan(shop(), shop_profile), headroom=-1)
