"""SLA decomposition: optimal against brute force, pipelines, priorities, clear infeasibility."""

from __future__ import annotations

import itertools
import json
import statistics

import pytest

from leanstack.errors import LeanstackError
from leanstack.microservices.app import load_app, parse_app
from leanstack.microservices.load import LoadSpec
from leanstack.microservices.observation import Allocation
from leanstack.microservices.sim import SimBackend
from leanstack.ursa.callgraph import class_tree, visits_per_request
from leanstack.ursa.plan import Plan, _Model, make_plan, path_latency
from leanstack.ursa.profile import AppProfile, ProfileSettings, TierProfile, profile_app

from .conftest import shop


def _brute_force(app, profile, margin):
    """Cheapest feasible choice of one curve point per tier, by enumeration."""
    visits = visits_per_request(app)
    curves = {t: list(zip(*profile.tiers[t].curve(), strict=True)) for t in app.services}
    best = None
    for combo in itertools.product(*(range(len(curves[t])) for t in app.services)):
        pick = {t: curves[t][j] for t, j in zip(app.services, combo, strict=True)}
        own = {t: y for t, (_, y) in pick.items()}
        ok = all(path_latency(class_tree(app, c), own, spec.wait == "pipeline")
                 <= spec.sla.ms * (1 - margin) + 1e-9 for c, spec in app.classes.items())
        cost = sum(visits[t] / x for t, (x, _) in pick.items())
        if ok and (best is None or cost < best):
            best = cost
    return best


@pytest.mark.parametrize("browse_sla", [30.0, 12.0, 10.0])
def test_milp_matches_brute_force(shop_profile, browse_sla):
    app = shop(browse=browse_sla)
    profile = AppProfile.from_dict({**shop_profile.to_dict(), "app": app.name})
    plan = make_plan(app, profile, margin=0.2, compose="sum")
    assert plan.cpu_per_rps == pytest.approx(_brute_force(app, profile, 0.2), rel=1e-6)
    for c in plan.classes.values():
        assert c.met and c.planned_ms <= c.sla_ms * 0.8 + 1e-6
        assert c.planned_ms == pytest.approx(c.summed_ms)


@pytest.mark.parametrize("browse_sla", [30.0, 12.0, 10.0])
def test_convolved_plan_fits_every_class_and_no_tier_can_be_cheaper(shop_profile, browse_sla):
    app = shop(browse=browse_sla)
    plan = make_plan(app, shop_profile, margin=0.2)
    assert plan.composition == "convolve"
    for c in plan.classes.values():
        assert c.met and c.planned_ms <= c.sla_ms * 0.8 + 1e-6
    model = _Model(app, shop_profile, 0.2, "convolve")
    choice = {t: model.points[t].index((p.threshold, p.budget_ms)) for t, p in plan.tiers.items()}
    for t, j in choice.items():  # the next cheaper point of any tier breaks some class
        if j + 1 < len(model.points[t]) and model.points[t][j + 1][1] > model.points[t][j][1]:
            cheaper = {**choice, t: j + 1}
            assert any(model.predicted_ms(c, cheaper) > model.targets[c] for c in app.classes)


def _chain_app(depth: int, sla_ms: float):
    """A chain of ``depth`` logic tiers, one class through all of them."""
    services = {f"t{i}": {"max_cpu": 1.0, "endpoints": {"op": {
        "work": "json", "cpu_ms": 0.5,
        **({"calls": [[f"t{i + 1}.op"]]} if i + 1 < depth else {})}}} for i in range(depth)}
    return parse_app({"name": "chain", "services": services, "classes": {
        "req": {"entry": "t0.op", "weight": 1.0, "sla": {"percentile": 99, "ms": sla_ms}}}})


def test_deep_path_tails_compose_below_their_sum():
    """Six tiers with a 10 ms p99 over a 2 ms median: their p99s add up to 60 ms, but one
    request rarely meets more than one tier's tail, so the path's p99 is far below."""
    app = _chain_app(6, 40.0)
    tails = {"p50": 2.0, "p90": 4.0, "p95": 6.0, "p99": 10.0, "p99.9": 14.0}
    tiers = {t: TierProfile(t, [(100.0, 10.0)], 20.0, "bound", tails=[tails])
             for t in app.services}
    profile = AppProfile("chain", "sim", "p99", 10.0, tiers, 1.0, 1.0)
    plan = make_plan(app, profile, margin=0.2)
    req = plan.classes["req"]
    assert req.summed_ms == pytest.approx(60.0) and req.met
    assert 6 * 2.0 + 8.0 < req.planned_ms < 32.0  # above a median path with one tier's tail
    with pytest.raises(LeanstackError, match="smallest SLA that fits is 60 ms"):
        make_plan(app, profile, margin=0.2, compose="sum")


def test_tighter_sla_costs_more_cpu(shop_profile):
    loose = make_plan(shop(), shop_profile)
    near_fastest = loose.classes["browse"].fastest_ms * 1.1 / 0.8  # target: 10% above fastest
    tight = make_plan(shop(browse=near_fastest), shop_profile)
    assert tight.cpu_per_rps > loose.cpu_per_rps
    assert tight.classes["browse"].planned_ms < loose.classes["browse"].planned_ms


@pytest.mark.parametrize("compose", ["convolve", "sum"])
def test_infeasible_sla_names_the_class_and_the_smallest_sla_that_fits(shop_profile, compose):
    fastest = make_plan(shop(), shop_profile, compose=compose).classes["browse"].fastest_ms
    with pytest.raises(LeanstackError) as e:
        make_plan(shop(browse=fastest * 0.5), shop_profile, margin=0.2, compose=compose)
    msg = str(e.value)
    assert "class 'browse'" in msg and "\n" not in msg
    smallest = float(msg.rsplit("is ", 1)[1].split(" ms")[0])
    # the composed fastest path, or what the generous allocation measured if that is less
    assert smallest == pytest.approx(min(fastest, shop_profile.generous_ms["browse"]["p99"]),
                                     abs=0.1)
    # that SLA fits, with only the margin that is left, and the plan says so
    plan = make_plan(shop(browse=smallest), shop_profile, margin=0.2, compose=compose)
    assert plan.classes["browse"].met and "'browse' keeps only a" in plan.note


def _steady_run(app, alloc, rps: float, seconds: float = 30.0, intervals: int = 3,
                worst: bool = False):
    """Each class's SLA percentile on the simulator under a steady load (median, or the worst,
    of long intervals; the first one skipped as warm-up)."""
    backend = SimBackend(interval_s=seconds, seed=5)
    backend.deploy(app, alloc)
    backend.start(LoadSpec("poisson", rps, seconds * (intervals + 1), seed=5))
    obs = [backend.observe() for _ in range(intervals + 1)][1:]
    backend.close()
    pick = max if worst else statistics.median
    return {c: pick(o.classes[c].latency_ms[spec.sla.key] for o in obs)
            for c, spec in app.classes.items()}


@pytest.fixture(scope="module")
def long_step_profile():
    """A shop profile whose steps last 20 simulated seconds: tails measured, not guessed."""
    return profile_app(shop(), SimBackend(seed=3, interval_s=10.0),
                       ProfileSettings(rps=150, step_intervals=2, early_stop=False),
                       progress=False)


@pytest.mark.parametrize("browse_sla", [30.0, 12.0])
def test_plan_predicts_the_end_to_end_tail_of_a_simulated_run(long_step_profile, browse_sla):
    """Run the plan's allocation (every tier at its threshold, no headroom) at the profiled
    load: the measured class tail is within 30% of what the plan predicted."""
    app = shop(browse=browse_sla)
    plan = make_plan(app, long_step_profile)
    visits = visits_per_request(app)
    alloc = Allocation.static_max(app)
    for t, tier in plan.tiers.items():
        cpu = max(visits[t] * 150 / tier.threshold, app.services[t].min_cpu)
        alloc = alloc.with_tier(t, cpu=round(min(cpu, app.services[t].max_cpu), 4))
    measured = _steady_run(app, alloc, 150)
    for c, cp in plan.classes.items():
        assert measured[c] == pytest.approx(cp.planned_ms, rel=0.3), c


def test_an_sla_the_static_allocation_meets_is_never_refused(long_step_profile):
    """The static allocation meets an SLA in every interval: the plan must accept it."""
    static = _steady_run(shop(), Allocation.static_max(shop()), 150, worst=True)
    sla = {c: round(ms * 1.05, 2) for c, ms in static.items()}  # met, with 5% to spare
    for compose in ("convolve", "sum"):
        plan = make_plan(shop(**sla), long_step_profile, margin=0.2, compose=compose)
        assert all(c.met for c in plan.classes.values()), compose


def _flat_profile(app, own_ms: dict[str, list[tuple[float, float]]]) -> AppProfile:
    tiers = {t: TierProfile(t, own_ms.get(t, [(1000.0, 0.1)]), 100.0, "bound")
             for t in app.services}
    return AppProfile(app.name, "sim", "p99", 10.0, tiers, 1.0, 1.0)


def test_pipeline_class_budgets_its_queued_branches():
    app = load_app("video-pipeline")
    sla = app.classes["process-video"].sla.ms
    # store-writer (last stage, reached only through queues) can be cheap and slow or fast
    slow_then = [(10.0, 1.0), (100.0, sla)]
    plan = make_plan(app, _flat_profile(app, {"store-writer": slow_then}), margin=0.1)
    assert plan.tiers["store-writer"].threshold == 10.0  # the slow point would break the SLA
    assert plan.classes["process-video"].planned_ms > plan.classes["read-meta"].planned_ms


def test_capacity_gives_up_lower_priority_classes_first(shop_profile):
    near_fastest = make_plan(shop(), shop_profile).classes["buy"].fastest_ms * 1.1 / 0.8
    app = shop(buy=near_fastest)  # buy (priority 2) is now the expensive class
    full = make_plan(app, shop_profile)
    short = make_plan(app, shop_profile, capacity=full.cpu_per_rps * 100 * 0.9, rps=100)
    assert short.unmet == ["buy"] and "buy given up" in short.note
    assert short.classes["browse"].met and not short.classes["buy"].met
    assert short.cpu_per_rps < full.cpu_per_rps
    roomy = make_plan(app, shop_profile, capacity=full.cpu_per_rps * 100 * 1.1, rps=100)
    assert roomy.unmet == []


def test_plan_rejects_mismatched_input_in_one_line(tmp_path, shop_profile):
    with pytest.raises(LeanstackError, match="profile is for app 'shop', not 'social-network'"):
        make_plan(load_app("social-network"), shop_profile)
    with pytest.raises(LeanstackError, match="--capacity and --rps go together"):
        make_plan(shop(), shop_profile, capacity=4)
    with pytest.raises(LeanstackError, match="--margin"):
        make_plan(shop(), shop_profile, margin=1.5)
    with pytest.raises(LeanstackError, match="unknown composition 'add' — use one of convolve"):
        make_plan(shop(), shop_profile, compose="add")
    path = make_plan(shop(), shop_profile).save(tmp_path / "plan.json")
    assert Plan.load(path).tiers["front"].curve
    with pytest.raises(LeanstackError, match="no such Ursa plan"):
        Plan.load(tmp_path / "none.json")
    for capacity, rps in ((0, 100), (-1, 100), (4, 0), (float("inf"), 100), (4, float("nan"))):
        with pytest.raises(LeanstackError, match="must be a number above 0"):
            make_plan(shop(), shop_profile, capacity=capacity, rps=rps)


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda d: d["tiers"]["front"].update(threshold=0), "tiers.front.threshold"),
    (lambda d: d["tiers"]["catalog"].update(budget_ms=-1), "tiers.catalog.budget_ms"),
    (lambda d: d["classes"]["buy"].update(priority=0), "classes.buy.priority"),
    (lambda d: d.update(margin=1.0), "margin"),
    (lambda d: d["tiers"].pop("front") and d.update(tiers="x"), "tiers"),
])
def test_plan_values_are_checked_on_load(tmp_path, shop_profile, mutate, field):
    d = json.loads(json.dumps(make_plan(shop(), shop_profile).to_dict()))
    mutate(d)
    (tmp_path / "plan.json").write_text(json.dumps(d))
    with pytest.raises(LeanstackError, match=f"plan.json: {field}") as e:
        Plan.load(tmp_path / "plan.json")
    assert "\n" not in str(e.value)


def test_p999_counts_only_when_an_interval_saw_enough_requests():
    """A profiled interval with ~10 requests of a tier has no p99.9 worth the name (it is the
    slowest request); with thousands it does, and a heavy p99.9 raises the path's tail."""
    app = _chain_app(6, 400.0)
    tails = {"p50": 2.0, "p90": 4.0, "p95": 6.0, "p99": 10.0, "p99.9": 200.0}

    def planned(interval_s: float) -> float:
        tiers = {t: TierProfile(t, [(100.0, 10.0)], 20.0, "bound", tails=[tails])
                 for t in app.services}
        profile = AppProfile("chain", "sim", "p99", 10.0, tiers, 1.0, 1.0,
                             settings={"interval_s": interval_s})
        return make_plan(app, profile).classes["req"].planned_ms

    assert planned(1.0) < 32.0 < 60.0 < planned(1000.0)


def test_a_tier_the_profile_saw_idle_is_planned_at_its_min_cpu_not_at_a_billion_cores(
        shop_profile):
    app = shop()
    idle = "catalog"
    tiers = dict(shop_profile.tiers)
    tiers[idle] = TierProfile(idle, [(0.0, 0.0)], tiers[idle].bound_ms, "idle")
    profile = AppProfile(**{**shop_profile.__dict__, "tiers": tiers})
    plan = make_plan(app, profile)
    expected = profile.rps * visits_per_request(app)[idle] / app.services[idle].min_cpu
    assert plan.tiers[idle].threshold == pytest.approx(expected)
    assert plan.cpu_per_rps < 10 * make_plan(app, shop_profile).cpu_per_rps
