"""The convolved composition's sample of call paths: drawn once, re-used across evaluations."""

from __future__ import annotations

import numpy as np
import pytest

from leanstack.microservices.app import load_app
from leanstack.ursa.callgraph import Visit, class_tree
from leanstack.ursa.compose import LatencyDist, TreeSample, tree_quantile


def _fresh(node: Visit, dists: dict[str, LatencyDist], pipeline: bool,
           rng: np.random.Generator, n: int) -> np.ndarray:
    """The composition written out directly: new draws, visit by visit, in walk order."""
    lat = dists[node.tier].at(rng.random(n))
    for group in node.groups:
        lat = lat + np.max([_fresh(c, dists, pipeline, rng, n) for c in group], axis=0)
    if pipeline and node.queued:
        lat = lat + np.max([_fresh(c, dists, pipeline, rng, n) for c in node.queued], axis=0)
    return lat


def _dists(tiers, scale: float) -> dict[str, LatencyDist]:
    return {t: LatencyDist.from_tails({"p50": scale * (1 + i % 3), "p90": scale * 3,
                                       "p99": scale * (6 + i % 5)}, scale)
            for i, t in enumerate(tiers)}


@pytest.mark.parametrize("cls", ["compose-post", "read-home-timeline"])
def test_cached_sample_equals_a_fresh_walk_with_the_same_seed(cls):
    app = load_app("social-network")
    tree = class_tree(app, cls)
    sample = TreeSample(tree, pipeline=False, samples=4000, seed=7)
    for scale in (1.0, 2.5, 1.0):  # the third evaluation is served from the cache
        dists = _dists(app.services, scale)
        want = float(np.quantile(_fresh(tree, dists, False, np.random.default_rng(7), 4000),
                                 0.99))
        assert sample.quantile(dists, 0.99) == want
        assert tree_quantile(tree, dists, False, 0.99, samples=4000, seed=7) == want


def test_only_visits_of_a_changed_tier_are_sampled_again(monkeypatch):
    app = load_app("social-network")
    tree = class_tree(app, "compose-post")
    visits = tree.tiers()
    sample = TreeSample(tree, pipeline=False, samples=2000, seed=1)
    calls = []
    real_at = LatencyDist.at
    monkeypatch.setattr(LatencyDist, "at", lambda self, u: calls.append(self) or real_at(self, u))
    base = _dists(app.services, 1.0)
    first = sample.quantile(base, 0.99)
    assert len(calls) == len(visits)
    moved = visits[-1]
    slower = {**base, moved: LatencyDist.from_tails({"p50": 30.0, "p99": 90.0}, 30.0)}
    calls.clear()
    assert sample.quantile(slower, 0.99) > first
    assert len(calls) == visits.count(moved)
    calls.clear()
    assert sample.quantile(base, 0.99) == first and calls == []
    # a bounded cache evicts, and still answers the same
    small = TreeSample(tree, pipeline=False, samples=2000, seed=1, max_cached=2)
    assert small.quantile(slower, 0.99) == sample.quantile(slower, 0.99)
    assert len(small._latencies) == 2
