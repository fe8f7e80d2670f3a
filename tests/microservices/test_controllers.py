"""Baseline controllers: static is the maximum; HPA follows the Kubernetes rules on synthetic
observations (scale-up limits, tolerance, sync period, scale-down stabilisation, min/max)."""

from __future__ import annotations

import pytest

from leanstack.errors import LeanstackError
from leanstack.microservices.app import parse_app
from leanstack.microservices.controllers import (
    CONTROLLERS,
    HPAController,
    StaticController,
    make_controller,
    register_controller,
)
from leanstack.microservices.observation import Allocation, Observation, TierStats

APP = parse_app({
    "name": "two-tier",
    "services": {
        "front": {"max_cpu": 2.0, "endpoints": {"get": {"cpu_ms": 1.0, "calls": [["back.get"]]}}},
        "back": {"max_cpu": 1.0, "replicas": 2, "endpoints": {"get": {"cpu_ms": 1.0,
                                                                      "calls": [["db.get"]]}}},
        "db": {"kind": "redis", "max_cpu": 0.5},
    },
    "classes": {"get": {"entry": "front.get", "weight": 1.0,
                        "sla": {"percentile": 99, "ms": 20}}},
})


def obs(t: float, used: dict[str, float], interval_s: float = 1.0) -> Observation:
    """An observation at time ``t`` with the given CPU used (cores) per tier."""
    return Observation(t=t, interval_s=interval_s, classes={},
                       tiers={n: TierStats(cpu_used=u) for n, u in used.items()})


def drive(hpa: HPAController, used_at, t_end: float, history=None, start: float = 0.0):
    """Feed one observation per second up to ``t_end``; ``used_at(t, replicas)`` -> used dict.
    Returns the list of (t, replicas) after each decision."""
    history = [] if history is None else history
    alloc = None
    trail = []
    t = start
    while t < t_end:
        t += 1.0
        history.append(obs(t, used_at(t, hpa.replicas())))
        alloc = hpa.decide(history, alloc)
        trail.append((t, dict(hpa.replicas())))
    return trail


def test_static_is_max_and_never_changes():
    c = StaticController()
    first = c.reset(APP, 1.0)
    assert first == Allocation.static_max(APP)
    assert first.tiers["back"].cpu == 1.0 and first.tiers["back"].replicas == 2
    low = first.with_tier("front", cpu=0.1)
    assert c.decide([obs(1.0, {"front": 0.0})], low) == first


def test_hpa_initial_allocation_uses_pod_size_and_keeps_storage_at_max():
    hpa = HPAController(max_replicas=4, initial_replicas=1)
    a = hpa.reset(APP, 1.0)
    assert a.tiers["front"].replicas == 1 and a.tiers["front"].cpu == pytest.approx(0.5)
    assert a.tiers["back"].replicas == 1 and a.tiers["back"].cpu == pytest.approx(0.25)
    assert a.tiers["db"].cpu == 0.5  # storage: not scalable, stays at max


def test_hpa_starts_where_a_kubernetes_user_would_deploy():
    """By default half the replica range (rounded up), or the configured replicas if more."""
    a = HPAController(max_replicas=4).reset(APP, 1.0)
    assert a.tiers["front"].replicas == 2 and a.tiers["front"].cpu == pytest.approx(1.0)
    assert a.tiers["back"].replicas == 2
    b = HPAController(max_replicas=3).reset(APP, 1.0)
    assert b.tiers["front"].replicas == 2 and b.tiers["back"].replicas == 2
    assert HPAController(max_replicas=1).reset(APP, 1.0).tiers["front"].replicas == 1


def test_hpa_scales_up_on_high_utilisation_at_the_sync_and_not_before():
    hpa = HPAController(max_replicas=4, initial_replicas=1)
    hpa.reset(APP, 1.0)
    # front: 1 pod of 0.5 core, using 0.8 core -> utilisation 1.6 -> ratio 2 -> 2 pods.
    trail = drive(hpa, lambda t, r: {"front": 0.8, "back": 0.4}, 15)
    assert all(r["front"] == 1 for t, r in trail if t < 15)
    assert trail[-1][1]["front"] == 2
    assert trail[-1][1]["back"] == 2  # back: 0.4 / (2 * 0.25) = 0.8 = target -> hold


def test_hpa_scale_up_is_limited_to_max_of_4_pods_and_100_percent_per_period():
    hpa = HPAController(max_replicas=40, initial_replicas=1)  # front pods of 0.05 core
    hpa.reset(APP, 1.0)
    history: list[Observation] = []
    # Huge demand: 10x the request of whatever is running -> desired 13x, far above the limit.
    def demand(t, r):
        return {"front": 10 * r["front"] * 0.05}

    drive(hpa, demand, 15, history)
    assert hpa.replicas()["front"] == 5  # 1 + 4 pods beats 1 + 100%
    drive(hpa, demand, 30, history, start=15)
    assert hpa.replicas()["front"] == 10  # 5 + 100% beats 5 + 4
    drive(hpa, demand, 45, history, start=30)
    assert hpa.replicas()["front"] == 20


def test_hpa_holds_inside_the_tolerance_and_acts_just_outside():
    hpa = HPAController(max_replicas=4)
    hpa.reset(APP, 1.0)
    # back: 2 pods of 0.25 core = 0.5 core requested; target 0.8 -> 0.4 core used is on target.
    drive(hpa, lambda t, r: {"back": 0.4 * 1.09}, 15)  # ratio 1.09: inside 10%
    assert hpa.replicas()["back"] == 2
    hpa.reset(APP, 1.0)
    drive(hpa, lambda t, r: {"back": 0.4 * 1.12}, 15)  # ratio 1.12: outside -> ceil(2.24) = 3
    assert hpa.replicas()["back"] == 3


def test_hpa_waits_for_the_stabilisation_window_before_scaling_down():
    hpa = HPAController(max_replicas=4)
    hpa.reset(APP, 1.0)
    history: list[Observation] = []

    def high_then_idle(t, r):
        return {"front": 2.0 if t <= 15 else 0.05}

    trail = drive(hpa, high_then_idle, 400, history)
    at = dict(trail)
    assert at[15.0]["front"] == 4  # 1 pod at 400%: desired 5, capped by max_replicas 4
    # The high recommendation made at t=15 keeps 4 pods for the 300 s window...
    assert all(r["front"] == 4 for t, r in trail if 15 <= t < 315)
    # ...and the first sync after it expires scales straight down to the idle recommendation.
    assert at[315.0]["front"] == 1


def test_hpa_respects_min_and_max_replicas():
    hpa = HPAController(min_replicas=2, max_replicas=3)
    a = hpa.reset(APP, 1.0)
    assert a.tiers["front"].replicas == 2  # configured 1 is raised to the minimum
    drive(hpa, lambda t, r: {"front": 0.0, "back": 0.0}, 400)
    assert hpa.replicas() == {"front": 2, "back": 2}
    drive(hpa, lambda t, r: {"front": 5.0, "back": 5.0}, 430, start=400)
    assert hpa.replicas() == {"front": 3, "back": 3}
    alloc = hpa.decide([obs(431, {})], None)
    assert alloc.tiers["front"].cpu == pytest.approx(3 * 2.0 / 3)


def test_hpa_time_scale_shrinks_every_time_constant_and_is_reported():
    hpa = HPAController(time_scale=0.1, initial_replicas=1)
    hpa.reset(APP, 1.0)
    d = hpa.describe()
    assert d["sync_period_s"] == pytest.approx(1.5)
    assert d["effective_sync_period_s"] == pytest.approx(2.0)  # whole 1 s intervals
    assert d["scale_down_stabilization_s"] == pytest.approx(30.0)
    assert d["time_scale"] == 0.1 and "per 1.5 s" in d["scale_up_policy"]
    assert d["pod_cpu"] == {"front": 0.5, "back": 0.25}
    trail = drive(hpa, lambda t, r: {"front": 2.0 if t <= 2 else 0.05}, 40)
    at = dict(trail)
    assert at[1.0]["front"] == 1 and at[2.0]["front"] == 4
    assert at[30.0]["front"] == 4 and at[32.0]["front"] == 1


def test_hpa_ignores_tiers_missing_from_observations():
    hpa = HPAController()
    hpa.reset(APP, 1.0)
    drive(hpa, lambda t, r: {}, 30)
    assert hpa.replicas() == {"front": 2, "back": 2}


@pytest.mark.parametrize("kwargs, match", [
    ({"time_scale": 0}, "time-scale"),
    ({"min_replicas": 3, "max_replicas": 2}, "min_replicas"),
    ({"target_utilization": 0}, "target"),
    ({"initial_replicas": 9}, "initial_replicas"),
    ({"tolerance": -0.1}, "tolerance"),
])
def test_hpa_bad_settings_are_one_line_errors(kwargs, match):
    with pytest.raises(LeanstackError, match=match) as e:
        HPAController(**kwargs)
    assert "\n" not in str(e.value)


def test_registry_builds_by_name_and_rejects_unknown_names_and_options(monkeypatch):
    assert isinstance(make_controller("static"), StaticController)
    assert make_controller("hpa", time_scale=0.5).time_scale == 0.5
    assert make_controller("hpa", time_scale=None).time_scale == 1.0  # None = default
    with pytest.raises(LeanstackError, match="unknown controller 'nope'.*hpa, .*static"):
        make_controller("nope")
    with pytest.raises(LeanstackError, match="has no option .time_scale."):
        make_controller("static", time_scale=0.1)
    monkeypatch.setitem(CONTROLLERS, "broken", "leanstack.no_such_module:X")
    with pytest.raises(LeanstackError, match="is not available in this install"):
        make_controller("broken")
    monkeypatch.setattr("leanstack.microservices.controllers._FACTORIES", {})
    register_controller("mine", StaticController)
    assert isinstance(make_controller("mine"), StaticController)
    monkeypatch.delitem(CONTROLLERS, "mine")


class _Typed:
    """A controller factory declaring one option of each kind --opt can carry."""

    def __init__(self, flag: bool = True, steps: int = 1, share: float = 0.5,
                 path: str | None = None) -> None:
        self.flag, self.steps, self.share, self.path = flag, steps, share, path


@pytest.mark.parametrize(("opts", "expected"), [
    ({"flag": "false"}, {"flag": False}),
    ({"flag": "yes", "steps": "3", "share": "2"}, {"flag": True, "steps": 3, "share": 2.0}),
    ({"share": "0.25", "path": "p.json"}, {"share": 0.25, "path": "p.json"}),
    ({"steps": 4, "share": 1}, {"steps": 4, "share": 1.0}),  # typed values from Python
])
def test_option_strings_become_the_declared_types(monkeypatch, opts, expected):
    monkeypatch.setattr("leanstack.microservices.controllers._FACTORIES", {})
    register_controller("typed", _Typed)
    try:
        ctrl = make_controller("typed", **opts)
    finally:
        CONTROLLERS.pop("typed")
    for k, v in expected.items():
        got = getattr(ctrl, k)
        assert got == v and type(got) is type(v), (k, got)


@pytest.mark.parametrize(("opts", "message"), [
    ({"flag": "maybe"}, "option 'flag' expects true/false, got 'maybe'"),
    ({"steps": "1.5"}, "option 'steps' expects a whole number, got '1.5'"),
    ({"share": "abc"}, "option 'share' expects a number, got 'abc'"),
    ({"share": "nan"}, "option 'share' expects a number"),
    ({"steps": True}, "option 'steps' expects a whole number"),
])
def test_option_of_the_wrong_type_is_one_line(monkeypatch, opts, message):
    monkeypatch.setattr("leanstack.microservices.controllers._FACTORIES", {})
    register_controller("typed", _Typed)
    try:
        with pytest.raises(LeanstackError, match=message) as e:
            make_controller("typed", **opts)
    finally:
        CONTROLLERS.pop("typed")
    assert "\n" not in str(e.value)
