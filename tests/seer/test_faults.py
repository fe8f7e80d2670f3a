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
from leanstack.seer.faults import FAULT_KINDS, Fault, FaultInjector, draw_fault
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
        assert (f.kind == "noisy_neighbour") == app.services[f.tier].is_storage
        assert f.start_s >= 15.0 and f.end_s <= 60.0
        assert f.strength(f.start_s - 0.5) == 0 and f.strength(f.end_s - 0.01) == 1.0


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
