"""Fault injection on the simulator: each kind moves the culprit's own signals."""

from __future__ import annotations

import numpy as np
import pytest

from leanstack.errors import LeanstackError
from leanstack.seer.campaign import (
    EpisodePlan,
    nominal_rps,
    observations,
    plan_campaign,
    run_episode,
)
from leanstack.seer.evaluate import FAST_RAMP_S
from leanstack.seer.faults import (
    FAULT_KINDS,
    Fault,
    FaultInjector,
    callers_of,
    draw_fault,
    kinds_for,
    sim_effect,
)
from leanstack.seer.features import CHANNELS, episode_features

C = {c: i for i, c in enumerate(CHANNELS)}


@pytest.fixture(scope="module")
def rps(app):
    return nominal_rps(app)


def _features(app, fault, rps, duration=36.0):
    plan = EpisodePlan(7, rps, "static", fault, duration)
    res = run_episode(app, plan)
    return res, episode_features(observations(res), list(app.services), 10)


@pytest.mark.parametrize("kind,channel", [("cpu_hog", "own_p50"),
                                          ("quota_squeeze", "throttled"),
                                          ("slow_downstream", "own_p50"),
                                          ("memory_pressure", "memory")])
def test_fault_raises_the_culprits_signal(app, rps, kind, channel):
    tier = "search"
    fault = Fault(kind, tier, start_s=15.0, duration_s=15.0, severity=0.9, ramp_s=1.0)
    res, x = _features(app, fault, rps)
    _, base = _features(app, None, rps)
    i, c = list(app.services).index(tier), C[channel]
    during = slice(18, 30)
    assert x[during, i, c].mean() > base[during, i, c].mean() + 0.3
    # the culprit moves more than any other tier on that channel
    others = np.delete(x[during, :, c].mean(axis=0), i)
    assert x[during, i, c].mean() > others.max()
    assert res["faults"] == [fault.to_dict()]


def test_noisy_neighbour_slows_the_store(app, rps):
    fault = Fault("noisy_neighbour", "geo-store", 15.0, 15.0, 0.99, 1.0)
    _, x = _features(app, fault, rps)
    i = list(app.services).index("geo-store")
    assert x[18:30, i, C["own_p50"]].mean() > 1.0  # e-fold over its baseline at least


def test_fault_ends_and_the_tier_recovers(app, rps):
    fault = Fault("cpu_hog", "search", 10.0, 8.0, 0.9, 1.0)
    _, x = _features(app, fault, rps, duration=40.0)
    i = list(app.services).index("search")
    assert x[12:18, i, C["own_p50"]].mean() > 1.0
    assert abs(x[32:40, i, C["own_p50"]].mean()) < 0.5


def test_bad_faults_are_one_line_errors(app):
    with pytest.raises(LeanstackError, match="unknown fault kind"):
        Fault("meteor", "search", 1, 1, 0.5)
    with pytest.raises(LeanstackError, match="severity"):
        Fault("cpu_hog", "search", 1, 1, 1.5)
    with pytest.raises(LeanstackError, match="not in app"):
        run_episode(app, EpisodePlan(0, 100, "static", Fault("cpu_hog", "nope", 1, 1, 0.5),
                                     10.0))
    with pytest.raises(LeanstackError, match="storage tier"):
        run_episode(app, EpisodePlan(0, 100, "static",
                                     Fault("noisy_neighbour", "search", 1, 1, 0.5), 10.0))


def test_draws_cover_kinds_and_respect_tier_types(app):
    rng = np.random.default_rng(0)
    faults = [draw_fault(app, rng, 60.0) for _ in range(200)]
    assert {f.kind for f in faults} == set(FAULT_KINDS)
    for f in faults:
        if f.kind == "edge_delay":
            assert f.caller in callers_of(app, f.tier)
        else:
            assert (f.kind == "noisy_neighbour") == app.services[f.tier].is_storage
            assert not f.caller
        assert f.start_s >= 15.0 and f.end_s <= 60.0
        assert f.strength(f.start_s - 0.5) == 0 and f.strength(f.end_s - 0.01) == 1.0


def test_ramps_are_drawn_per_episode_slow_and_fast(app):
    rng = np.random.default_rng(1)
    ramps = np.array([draw_fault(app, rng, 90.0).ramp_s for _ in range(300)])
    fast = ramps < FAST_RAMP_S
    assert 0.15 < fast.mean() < 0.45  # about FAST_SHARE of sudden faults
    assert ramps.max() > 30.0  # and faults building up over tens of seconds
    rng = np.random.default_rng(1)
    short = [draw_fault(app, rng, 90.0, ramp_s=(5.0, 6.0), fast_share=0.0).ramp_s
             for _ in range(50)]
    assert min(short) >= 5.0 and max(short) <= 6.0


def test_contention_ramps_like_load(app):
    """Over the ramp the tier's slowdown (its effective load) grows linearly, not the share
    of its CPU taken (which would leave it healthy until the very end)."""
    f = Fault("cpu_hog", "search", 10.0, 40.0, 0.9, ramp_s=20.0)
    slow = [sim_effect(f, f.strength(t)).slowdown for t in (10.0, 15.0, 20.0, 25.0, 30.0)]
    steps = np.diff(slow)
    assert slow[-1] == pytest.approx(10.0)
    assert np.allclose(steps, steps[0], rtol=1e-3)
    d = Fault("edge_delay", "geo", 10.0, 40.0, 0.4, ramp_s=20.0, caller="search")
    assert sim_effect(d, d.strength(20.0)) == pytest.approx(0.02)


def test_edge_delay_shows_in_the_caller_not_the_callee(app, rps):
    """A slow search -> geo link: geo's own latency stays put, search waits (its span tail
    rises, its own latency does not)."""
    fault = Fault("edge_delay", "geo", 15.0, 15.0, 0.5, ramp_s=1.0, caller="search")
    _, x = _features(app, fault, rps)
    _, base = _features(app, None, rps)
    tiers = list(app.services)
    caller, callee, during = tiers.index("search"), tiers.index("geo"), slice(18, 30)
    for i, channel, moved in ((caller, "span_p99", True), (caller, "own_p99", False),
                              (callee, "span_p99", False), (callee, "own_p99", False)):
        diff = x[during, i, C[channel]].mean() - base[during, i, C[channel]].mean()
        assert (diff > 0.5) == moved, (tiers[i], channel, diff)


def test_edge_delay_needs_a_real_edge_and_the_simulator(app):
    with pytest.raises(LeanstackError, match="does not call"):
        run_episode(app, EpisodePlan(0, 100, "static",
                                     Fault("edge_delay", "geo", 1, 1, 0.5, caller="frontend"),
                                     10.0))
    with pytest.raises(LeanstackError, match="caller tier is needed"):
        Fault("edge_delay", "geo", 1, 1, 0.5)

    class Local:
        name, interval_s = "local", 1.0

    with pytest.raises(LeanstackError, match="simulator only"):
        FaultInjector(Local(), [Fault("edge_delay", "geo", 1, 1, 0.5, caller="search")]
                      ).deploy(app, None)
    assert "edge_delay" not in kinds_for("local", FAULT_KINDS)
    assert kinds_for("sim", FAULT_KINDS) == FAULT_KINDS
    with pytest.raises(LeanstackError, match="simulator only"):
        kinds_for("local", ("edge_delay",))


def test_injector_needs_a_fault_capable_backend(app):
    class Bare:
        name, interval_s = "bare", 1.0

        def deploy(self, app, allocation):
            pass

    with pytest.raises(LeanstackError, match="cannot inject"):
        FaultInjector(Bare(), []).deploy(app, None)


def test_campaigns_run_under_the_chosen_controller(app):
    plans = plan_campaign(app, 3, seed=1, controller="hpa")
    assert {p.controller for p in plans} == {"hpa"}
    with pytest.raises(LeanstackError, match="static or hpa"):
        plan_campaign(app, 3, controller="ursa")


def test_sim_edge_delay_checks_its_input(app):
    from leanstack.microservices.observation import Allocation
    from leanstack.microservices.sim import SimBackend

    be = SimBackend(1.0, seed=0)
    be.deploy(app, Allocation.static_max(app))
    with pytest.raises(LeanstackError, match="no tier 'nope'"):
        be.set_edge_delay("nope", "geo", 0.1)
    with pytest.raises(LeanstackError, match=">= 0 s"):
        be.set_edge_delay("search", "geo", -1.0)
    be.set_edge_delay("search", "geo", 0.05)
    be.set_edge_delay("search", "geo", 0.0)  # cleared
    be.close()
