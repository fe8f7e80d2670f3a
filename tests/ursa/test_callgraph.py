"""Call trees: visits per request agree with what the simulator serves; blocking and queues."""

from __future__ import annotations

import pytest

from leanstack.microservices.app import load_app, parse_app
from leanstack.microservices.load import LoadSpec
from leanstack.microservices.observation import Allocation
from leanstack.microservices.sim import SimBackend
from leanstack.ursa.callgraph import callers, class_tree, classes_through, visits_per_request


@pytest.mark.parametrize("name", ["social-network", "video-pipeline"])
def test_visits_per_request_match_the_simulated_tier_rates(name):
    app = load_app(name)
    backend = SimBackend(seed=4)
    backend.deploy(app, Allocation.static_max(app))
    backend.start(LoadSpec("constant", 200, 30))
    obs = [backend.observe() for _ in range(30)][5:]
    backend.close()
    offered = sum(o.offered_rps for o in obs)
    for tier, visits in visits_per_request(app).items():
        served = sum(o.tiers[tier].rps for o in obs)
        assert served / offered == pytest.approx(visits, rel=0.1, abs=0.01), tier


def test_blocking_calls_run_alone_and_queues_are_branches():
    social = load_app("social-network")
    compose = class_tree(social, "compose-post").groups[0][0]  # nginx -> compose-post
    shorten = compose.groups[0][0].groups[0][0]  # -> text -> url-shorten
    assert shorten.tier == "url-shorten"  # calls [[memcached.set, store.set]]: async, together
    assert [[v.tier for v in g] for g in shorten.groups] == [["url-shorten-memcached",
                                                              "url-shorten-store"]]
    data = social.to_data()
    data["services"]["url-shorten-memcached"]["client"] = "blocking"
    blocking = class_tree(parse_app(data), "compose-post").groups[0][0]
    shorten = blocking.groups[0][0].groups[0][0]
    assert [[v.tier for v in g] for g in shorten.groups] == [["url-shorten-memcached"],
                                                             ["url-shorten-store"]]
    video = class_tree(load_app("video-pipeline"), "process-video")
    assert [v.tier for v in video.queued] == ["scene-split"]
    assert video.groups[-1][0].tier == "video-queue"  # the enqueue is a call to the queue tier


def test_callers_and_classes_through():
    social = load_app("social-network")
    assert callers(social)["user-memcached"] >= {"user", "user-mention", "text", "compose-post",
                                                 "nginx"}
    assert callers(social)["nginx"] == set()
    assert classes_through(social)["compose-post"] == ["compose-post"]
    assert set(classes_through(social)["nginx"]) == set(social.classes)
