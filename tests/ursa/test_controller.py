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


def _obs(t: float, app, rps: float, own_ms: dict[str, float]):
    from leanstack.microservices.observation import Observation, TierStats

    tiers = {n: TierStats(rps=rps, own_latency_ms={"p99": own_ms.get(n, 0.0)})
             for n in app.services}
    return Observation(t=t, interval_s=1.0, classes={}, tiers=tiers, offered_rps=rps)


def test_threshold_recovers_when_the_drift_clears(shop_profile):
    app = shop()
    plan = make_plan(app, shop_profile)
    ctrl = UrsaController(plan, drift_intervals=3)
    current = ctrl.reset(app, 1.0)
    tier = plan.tiers["catalog"]
    cpu = current.tiers["catalog"].cpu
    rps = tier.threshold * cpu  # the tier runs exactly at its planned load per core
    predicted = tier.latency_at(tier.threshold)
    history = []
    for t in range(4):  # a transient slowdown: 3x the profile, above the budget
        history.append(_obs(t, app, rps, {"catalog": 3 * max(predicted, tier.budget_ms)}))
        ctrl.decide(history, current)
    lowered = ctrl.thresholds()["catalog"]
    assert lowered < tier.threshold
    for t in range(4, 8):  # the drift clears: latency is the profile's again
        history.append(_obs(t, app, rps, {"catalog": predicted}))
        ctrl.decide(history, current)
    assert ctrl.thresholds()["catalog"] == pytest.approx(tier.threshold)
    kinds = [(e["threshold_after"] < e["threshold_before"]) for e in ctrl.events]
    assert kinds == [True, False]  # one lowering, one recovery


def test_throttle_guard_raises_a_throttled_tier_and_hands_back_after_clean_intervals(
        shop_profile):
    app = shop()
    plan = make_plan(app, shop_profile)
    ctrl = UrsaController(plan, window=2, throttle_guard=0.5, reprofile=False)
    current = ctrl.reset(app, 1.0)
    rps = 20.0
    history = [_obs(0, app, rps, {})]
    base = ctrl.decide(history, current).tiers
    throttled = _obs(1, app, rps, {})
    throttled.tiers["catalog"].throttled_s = 0.05
    history.append(throttled)
    raised = ctrl.decide(history, current).tiers
    cap = app.services["catalog"].max_cpu
    assert raised["catalog"].cpu == pytest.approx(min(base["catalog"].cpu * 1.5, cap), rel=0.01)
    assert all(raised[t].cpu == base[t].cpu for t in app.services if t != "catalog")
    for t in (2, 3):  # two clean intervals (= window) take one step back
        history.append(_obs(t, app, rps, {}))
        back = ctrl.decide(history, current).tiers
    assert back["catalog"].cpu == pytest.approx(base["catalog"].cpu, rel=0.01)
    assert ctrl.describe()["throttle_guard"] == 0.5


def test_guard_hold_keeps_the_raised_allocation_for_that_many_clean_intervals(shop_profile):
    app = shop()
    ctrl = UrsaController(make_plan(app, shop_profile), window=2, throttle_guard=0.5,
                          guard_hold=4, reprofile=False)
    current = ctrl.reset(app, 1.0)
    history = [_obs(0, app, 20.0, {})]
    base = ctrl.decide(history, current).tiers["catalog"].cpu
    throttled = _obs(1, app, 20.0, {})
    throttled.tiers["catalog"].throttled_s = 0.05
    history.append(throttled)
    raised = ctrl.decide(history, current).tiers["catalog"].cpu
    assert raised > base
    held = []
    for t in range(2, 6):  # four clean intervals: held for three, handed back on the fourth
        history.append(_obs(t, app, 20.0, {}))
        held.append(ctrl.decide(history, current).tiers["catalog"].cpu)
    assert held[:3] == [raised] * 3
    assert held[3] == pytest.approx(base, rel=0.01)
    assert ctrl.describe()["guard_hold"] == 4


def _floor_decision(app, plan, cpu_used: float, period_ms: float | None = None, **opts):
    ctrl = UrsaController(plan, reprofile=False, **opts)
    current = ctrl.reset(app, 1.0)
    obs = _obs(0, app, 30.0, {})
    obs.cfs_period_ms = period_ms
    for stats in obs.tiers.values():
        stats.cpu_used = cpu_used
    return ctrl.decide([obs], current).tiers


@pytest.mark.parametrize("risk, period_ms", [(1e-3, 100.0), (1e-4, 100.0), (1e-3, 20.0),
                                             (1e-3, None)])
def test_period_floor_covers_one_period_of_random_arrivals(shop_profile, risk, period_ms):
    """P is the period the backend reports; 100 ms (the kernel default) where it reports none."""
    from scipy.stats import poisson

    from leanstack.ursa.callgraph import visits_per_request

    app = shop()
    plan = make_plan(app, shop_profile)
    base = _floor_decision(app, plan, 0.06)
    floored = _floor_decision(app, plan, 0.06, period_ms, throttle_risk=risk)
    period_ms = period_ms or 100.0
    visits = visits_per_request(app)
    raised = 0
    for name, svc in app.services.items():
        load = max(30.0, 30.0 * visits[name])
        cpu_per_request = 0.06 / 30.0  # what the tier served, not what it was offered
        arrivals = poisson.ppf(1 - risk, load * period_ms / 1000)
        floor = cpu_per_request * arrivals / (period_ms / 1000)
        want = min(max(base[name].cpu, floor), svc.max_cpu)
        assert floored[name].cpu == pytest.approx(want, abs=2e-3)
        raised += floored[name].cpu > base[name].cpu
    assert raised >= 1  # 2 ms per request at 3 arrivals per 100 ms: above the plan somewhere


def test_period_floor_leaves_idle_tiers_and_a_risky_setting_alone(shop_profile):
    app = shop()
    plan = make_plan(app, shop_profile)
    base = _floor_decision(app, plan, 0.0)
    assert _floor_decision(app, plan, 0.0, throttle_risk=1e-3) == base  # no CPU measured
    busy = _floor_decision(app, plan, 0.06, throttle_risk=1e-3)
    loose = _floor_decision(app, plan, 0.06, throttle_risk=0.5)
    assert all(loose[t].cpu <= busy[t].cpu for t in app.services)
    assert sum(loose[t].cpu for t in app.services) < sum(busy[t].cpu for t in app.services)


def test_controller_options_are_range_checked(shop_profile):
    plan = make_plan(shop(), shop_profile)
    for bad, fragment in [({"window": 0}, "at least 1"), ({"warmup_intervals": -1}, "0 or more"),
                          ({"capacity": 0.0}, "capacity"), ({"headroom": 6.0}, "headroom"),
                          ({"throttle_guard": -0.1}, "throttle_guard"),
                          ({"guard_hold": 0}, "guard_hold"),
                          ({"throttle_risk": 1.0}, "throttle_risk")]:
        with pytest.raises(LeanstackError, match=fragment):
            UrsaController(plan, **bad)
    with pytest.raises(LeanstackError, match="below the .* min_cpu"):
        UrsaController(plan, capacity=0.2).reset(shop(), 1.0)


TWO_SHOPS = """
name = "two-shops"
[services.pay-front]
max_cpu = 2.0
[services.pay-front.endpoints.pay]
work = "json"
cpu_ms = 2.0
cv = 0.3
[services.browse-front]
max_cpu = 2.0
[services.browse-front.endpoints.browse]
work = "json"
cpu_ms = 2.0
cv = 0.3
[classes.pay]
entry = "pay-front.pay"
weight = 1
sla = { percentile = 99, ms = 40 }
priority = PAY
[classes.browse]
entry = "browse-front.browse"
weight = 1
sla = { percentile = 99, ms = 40 }
priority = BROWSE
"""


def _two_shops(pay: int, browse: int):
    return parse_app(tomllib.loads(TWO_SHOPS.replace("PAY", str(pay))
                                   .replace("BROWSE", str(browse))))


@pytest.fixture(scope="module")
def two_shops_plan():
    app = _two_shops(1, 2)
    prof = profile_app(app, SimBackend(seed=4), ProfileSettings(rps=200), progress=False)
    return make_plan(app, prof)


@pytest.mark.parametrize(("pay", "browse"), [(1, 2), (2, 1)])
def test_high_priority_class_keeps_its_sla_when_capacity_is_short(tmp_path, two_shops_plan,
                                                                  pay, browse):
    app = _two_shops(pay, browse)
    plan = two_shops_plan
    plan.app = app.name
    # at 300 req/s (150 per class) each front wants ~0.6 cores: 0.75 cannot carry both
    ctrl = UrsaController(plan, capacity=0.75)
    s = _run(app, ctrl, tmp_path, rps=300, duration=40)["summary"]
    important, other = ("pay", "browse") if pay == 1 else ("browse", "pay")
    assert s["mean_cpu"] <= 0.75 + 1e-6
    assert s["classes"][important]["violation_rate"] <= 0.05
    assert s["classes"][other]["violation_rate"] >= 0.5


def test_opt_strings_are_typed_for_ursa(tmp_path, shop_profile):
    path = make_plan(shop(), shop_profile).save(tmp_path / "plan.json")
    ctrl = make_controller("ursa", plan=str(path), reprofile="false", window="2",
                           headroom="0.1", capacity="3")
    assert ctrl.reprofile is False and ctrl.window == 2 and ctrl.headroom == 0.1
    assert ctrl.capacity == 3.0
    assert make_controller("ursa", plan=str(path), reprofile="true").reprofile is True
