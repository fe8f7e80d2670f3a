"""Per-tier exploration on the simulator: points, stopping rules, the backpressure check, files."""

from __future__ import annotations

import json
import tomllib

import pytest

from leanstack.errors import LeanstackError
from leanstack.microservices.app import parse_app
from leanstack.microservices.sim import SimBackend
from leanstack.ursa.callgraph import visits_per_request
from leanstack.ursa.profile import AppProfile, ProfileSettings, TierProfile, profile_app

from .conftest import SHOP, shop


def test_each_tier_is_explored_until_its_latency_passes_the_bound(shop_profile):
    for name in ("front", "catalog"):
        tier = shop_profile.tiers[name]
        loads = [x for x, _ in tier.points]
        assert loads == sorted(loads) and len(loads) >= 3
        assert tier.stopped == "bound"
        assert tier.points[-1][1] > tier.bound_ms  # the last step is past the bound
        assert tier.points[0][1] < tier.bound_ms
    assert shop_profile.tiers["front"].bound_ms == pytest.approx(0.5 * 30)  # tightest SLA 30 ms
    assert shop_profile.collection_wall_s > 0 and shop_profile.collection_backend_s > 0


def test_latency_curve_is_the_running_maximum():
    tier = TierProfile("t", [(100.0, 2.0), (200.0, 1.5), (300.0, 8.0)], 10.0, "bound")
    xs, ys = tier.curve()
    assert list(xs) == [100.0, 200.0, 300.0]
    assert list(ys) == [2.0, 2.0, 8.0]  # a dip at higher load is noise, not a faster tier


def _blocking_app(client: str):
    data = tomllib.loads(SHOP)
    data["services"]["cache"] = {"kind": "memcached", "max_cpu": 0.5, "op_cpu_ms": 2.0,
                                 "client": client}
    return parse_app(data)


def test_backpressure_is_detected_for_a_caller_blocked_by_its_callee():
    settings = ProfileSettings(rps=150, tiers=["cache", "front"])
    blocked = profile_app(_blocking_app("blocking"), SimBackend(seed=1), settings,
                          progress=False)
    assert not blocked.tiers["front"].backpressure_free
    assert blocked.tiers["front"].slowed_by == ["cache"]
    free = profile_app(_blocking_app("async"), SimBackend(seed=1), settings, progress=False)
    assert free.tiers["front"].backpressure_free


def test_profile_round_trips_and_bad_files_are_one_line(tmp_path, shop_profile):
    path = shop_profile.save(tmp_path / "p.json")
    again = AppProfile.load(path)
    assert again.tiers["front"].points == shop_profile.tiers["front"].points
    with pytest.raises(LeanstackError, match="no such Ursa profile"):
        AppProfile.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text(json.dumps({"app": "x"}))
    with pytest.raises(LeanstackError, match="bad.json: backend: field required"):
        AppProfile.load(tmp_path / "bad.json")


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda d: d["tiers"]["front"].update(points=[]), "tiers.front.points"),
    (lambda d: d["tiers"]["front"].update(points=[[1.0, float("nan")]]), "tiers.front.points"),
    (lambda d: d["tiers"]["catalog"].update(stopped="tired"), "tiers.catalog.stopped"),
    (lambda d: d.update(percentile="p75"), "percentile"),
    (lambda d: d.update(rps=-1), "rps"),
])
def test_profile_values_are_checked_on_load(tmp_path, shop_profile, mutate, field):
    d = json.loads(json.dumps(shop_profile.to_dict()))
    mutate(d)
    (tmp_path / "p.json").write_text(json.dumps(d))
    with pytest.raises(LeanstackError, match=f"p.json: {field}") as e:
        AppProfile.load(tmp_path / "p.json")
    assert "\n" not in str(e.value)


def test_unknown_tier_and_bad_load_are_rejected():
    with pytest.raises(LeanstackError, match="unknown tier 'nope'"):
        profile_app(shop(), SimBackend(), ProfileSettings(tiers=["nope"]), progress=False)
    with pytest.raises(LeanstackError, match="above 0"):
        profile_app(shop(), SimBackend(), ProfileSettings(rps=0), progress=False)


def test_parallel_batches_never_squeeze_a_tier_with_one_it_calls(social):
    from leanstack.microservices.observation import Allocation
    from leanstack.ursa.callgraph import callers
    from leanstack.ursa.profile import _Explorer

    up = callers(social)
    names = list(social.services)
    for parallel, widest in ((1, 1), (4, 4), (24, 24)):
        explorer = _Explorer(social, SimBackend(), Allocation.static_max(social),
                             ProfileSettings(parallel=parallel))
        batches = explorer.batches(names)
        assert sorted(t for b in batches for t in b) == sorted(names)
        assert max(len(b) for b in batches) <= widest
        for b in batches:
            assert not any(m in up[n] for n in b for m in b)
    assert len(batches) < len(names) / 3  # the social network packs into a few batches


def test_fast_profile_takes_a_fraction_of_the_time_and_plans_as_cheaply(social):
    from leanstack.ursa.plan import make_plan

    slow = profile_app(social, SimBackend(seed=1),
                       ProfileSettings(rps=100, early_stop=False), progress=False)
    fast = profile_app(social, SimBackend(seed=1),
                       ProfileSettings(rps=100, parallel=24, start_utilization=0.2,
                                       step_intervals=4), progress=False)
    assert fast.collection_backend_s < 0.3 * slow.collection_backend_s
    assert make_plan(social, fast).cpu_per_rps == pytest.approx(
        make_plan(social, slow).cpu_per_rps, rel=0.15)
    with pytest.raises(LeanstackError, match="parallel >= 1"):
        profile_app(social, SimBackend(), ProfileSettings(parallel=0), progress=False)


class _CostlierSim(SimBackend):
    """The simulator running every endpoint at ``factor`` x its CPU (1.6 by default): a 'real'
    system the simulator underestimates, as real processes are underestimated by the
    uncalibrated model (or, below 1, one it overrates)."""

    name = "costlier"
    factor = 1.6

    def deploy(self, app, allocation):
        data = app.to_data()
        for svc in data["services"].values():
            for ep in svc.get("endpoints", {}).values():
                ep["cpu_ms"] *= self.factor
        super().deploy(parse_app(data), allocation)


class _CheaperSim(_CostlierSim):
    name = "cheaper"
    factor = 0.5


def test_shaped_profile_reaches_the_knee_of_a_tier_the_simulator_overrates():
    """On a system cheaper than the simulator thinks, stepping down from the simulated knee
    alone stops short; the shaped profile must plan as cheaply as the fast one there."""
    from leanstack.ursa.plan import make_plan

    app = shop(browse=20.0)
    fast = profile_app(app, _CheaperSim(seed=2), ProfileSettings.fast(150), progress=False)
    shaped = profile_app(app, _CheaperSim(seed=2), ProfileSettings.fast(150, shape=True),
                         progress=False)
    assert shaped.collection_backend_s <= fast.collection_backend_s
    assert make_plan(app, shaped).cpu_per_rps < 1.1 * make_plan(app, fast).cpu_per_rps


def test_shaped_profile_measures_the_floor_of_tiers_that_never_leave_their_bound(social):
    """On the social network most tiers stay inside their bound down to their floor: the shaped
    profile must measure them there (not stop a few steps above it and call it the floor), so
    its plan is within 10% of the fast one's."""
    from leanstack.ursa.plan import make_plan

    fast = profile_app(social, _CostlierSim(seed=3), ProfileSettings.fast(100), progress=False)
    shaped = profile_app(social, _CostlierSim(seed=3), ProfileSettings.fast(100, shape=True),
                         progress=False)
    visits = visits_per_request(social)
    floors = [t for t, p in shaped.tiers.items() if p.stopped == "floor"]
    assert len(floors) >= len(social.services) // 2
    for t in floors:
        at_floor = shaped.rps * visits[t] / social.services[t].min_cpu  # req/s per core there
        assert max(x for x, _ in shaped.tiers[t].points) > 0.6 * at_floor, t
    assert make_plan(social, shaped).cpu_per_rps < 1.1 * make_plan(social, fast).cpu_per_rps


def test_shaped_profile_measures_few_points_and_its_plan_holds_on_the_real_system():
    """Profiled on the costlier 'real' system with the simulator's shapes: far less load than
    the fast profile, a plan that fitted the real cost (above the simulator-only plan, not
    above the fast profile's) and meets every SLA when its allocation runs on the 'real' system
    at the profiled load."""
    import statistics

    from leanstack.microservices.load import LoadSpec
    from leanstack.microservices.observation import Allocation
    from leanstack.ursa.plan import make_plan

    app = shop(browse=20.0)
    full = profile_app(app, _CostlierSim(seed=2), ProfileSettings.fast(150), progress=False)
    shaped = profile_app(app, _CostlierSim(seed=2), ProfileSettings.fast(150, shape=True),
                         progress=False)
    on_sim = profile_app(app, SimBackend(seed=2), ProfileSettings.fast(150), progress=False)
    assert shaped.collection_backend_s < 0.7 * full.collection_backend_s
    assert shaped.settings["shape"] and shaped.backend == "costlier"
    json.dumps(shaped.to_dict())  # plain numbers only
    plan = make_plan(app, shaped)
    assert plan.cpu_per_rps > 1.2 * make_plan(app, on_sim).cpu_per_rps
    assert plan.cpu_per_rps < 1.1 * make_plan(app, full).cpu_per_rps  # no costlier than fast
    for name in ("front", "catalog"):
        tier = shaped.tiers[name]
        assert tier.stopped == "bound" and tier.points[-1][1] > tier.bound_ms
    visits = visits_per_request(app)
    alloc = Allocation.static_max(app)
    for t, tier in plan.tiers.items():
        cpu = max(visits[t] * 150 / tier.threshold, app.services[t].min_cpu)
        alloc = alloc.with_tier(t, cpu=round(min(cpu, app.services[t].max_cpu), 4))
    real = _CostlierSim(seed=9, interval_s=5.0)
    real.deploy(app, alloc)
    real.start(LoadSpec("poisson", 150, 45.0, seed=4))
    obs = [real.observe() for _ in range(9)][1:]
    real.close()
    for c, spec in app.classes.items():
        p99 = statistics.median(o.classes[c].latency_ms[spec.sla.key] for o in obs)
        assert p99 <= spec.sla.ms, c
