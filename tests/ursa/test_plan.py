"""SLA decomposition: optimal against brute force, pipelines, priorities, clear infeasibility."""

from __future__ import annotations

import itertools

import pytest

from leanstack.errors import LeanstackError
from leanstack.microservices.app import load_app
from leanstack.ursa.callgraph import class_tree, visits_per_request
from leanstack.ursa.plan import Plan, make_plan, path_latency
from leanstack.ursa.profile import AppProfile, TierProfile

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
    plan = make_plan(app, profile, margin=0.2)
    assert plan.cpu_per_rps == pytest.approx(_brute_force(app, profile, 0.2), rel=1e-6)
    for c in plan.classes.values():
        assert c.met and c.planned_ms <= c.sla_ms * 0.8 + 1e-6


def test_tighter_sla_costs_more_cpu(shop_profile):
    loose = make_plan(shop(), shop_profile)
    tight = make_plan(shop(browse=10.0), shop_profile)
    assert tight.cpu_per_rps > loose.cpu_per_rps
    assert tight.classes["browse"].planned_ms < loose.classes["browse"].planned_ms


def test_infeasible_sla_names_the_class_and_the_smallest_sla_that_fits(shop_profile):
    fastest = make_plan(shop(), shop_profile).classes["browse"].fastest_ms
    with pytest.raises(LeanstackError) as e:
        make_plan(shop(browse=fastest * 0.5), shop_profile, margin=0.2)
    msg = str(e.value)
    assert "class 'browse'" in msg and "\n" not in msg
    smallest = float(msg.rsplit("is ", 1)[1].split(" ms")[0])
    assert smallest == pytest.approx(fastest / 0.8, abs=0.1)
    make_plan(shop(browse=smallest), shop_profile, margin=0.2)  # and that SLA does fit


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
    app = shop(buy=10.0)  # buy (priority 2) is now the expensive class
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
    path = make_plan(shop(), shop_profile).save(tmp_path / "plan.json")
    assert Plan.load(path).tiers["front"].curve
    with pytest.raises(LeanstackError, match="no such Ursa plan"):
        Plan.load(tmp_path / "none.json")
