"""End-to-end tail latency of a call tree from its tiers' own latency distributions.

Percentiles do not add. When a request walks six tiers, it rarely meets the tail of all six at
once, so the path's p99 is far below the sum of the tiers' p99s. Each profile point knows a
tier's own latency by a few percentiles (p50 ... p99.9); its quantile function is piecewise
linear between them, flat at the median below it and flat at the highest percentile used above
it (the plan stops at p99 when a profiled interval saw too few of the tier's requests for its
p99.9 to be more than its slowest one or two). A Monte Carlo sample of requests draws every
visit's own latency independently and walks the tree as a request does — own latency plus, per
call group, the slowest call; a pipeline class also waits for its slowest queued branch — and
the class's percentile is read off the sample.

The draws are common random numbers: the same seed gives every visit the same uniform draws in
every evaluation, so comparing two allocations compares their latencies, not their noise.
A tier known only by one percentile (a profile from before percentiles were recorded) is a
constant, and the composition falls back to adding budgets along the path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from leanstack.microservices.app import SLA_PERCENTILES, percentile_key
from leanstack.ursa.callgraph import Visit

SAMPLES = 20_000
"""Requests per Monte Carlo estimate: about 200 beyond a p99, so its error is a few percent."""


@dataclass(frozen=True)
class LatencyDist:
    """A tier's own latency as a piecewise-linear quantile function."""

    levels: tuple[float, ...]  # quantile levels in [0, 1], increasing
    ms: tuple[float, ...]  # latency at each level, non-decreasing

    @classmethod
    def from_tails(cls, tails: dict[str, float], fallback_ms: float,
                   top: float = 99.0) -> LatencyDist:
        """From percentiles keyed like ``"p99"`` up to ``top`` (a profile step's p99.9 is its
        few slowest requests: noise); ``fallback_ms`` alone when none are known."""
        known = [(p / 100.0, float(tails[k])) for p in SLA_PERCENTILES
                 if p <= top and (k := percentile_key(p)) in tails]
        if not known:
            return cls((0.0, 1.0), (fallback_ms, fallback_ms))
        levels = [0.0] + [q for q, _ in known] + [1.0]
        ms = np.maximum.accumulate([known[0][1]] + [v for _, v in known] + [known[-1][1]])
        return cls(tuple(levels), tuple(float(v) for v in ms))

    def at(self, u: np.ndarray) -> np.ndarray:
        """Latencies at uniform draws ``u`` (inverse-transform sampling)."""
        return np.interp(u, self.levels, self.ms)

    def quantile(self, q: float) -> float:
        return float(np.interp(q, self.levels, self.ms))


def tree_quantile(tree: Visit, dists: dict[str, LatencyDist], pipeline: bool, q: float,
                  samples: int = SAMPLES, seed: int = 0) -> float:
    """The ``q`` quantile (0..1) of the tree's end-to-end latency, each visit independent."""
    rng = np.random.default_rng(seed)
    return float(np.quantile(_walk(tree, dists, pipeline, rng, samples), q))


def _walk(node: Visit, dists: dict[str, LatencyDist], pipeline: bool,
          rng: np.random.Generator, n: int) -> np.ndarray:
    lat = dists[node.tier].at(rng.random(n))
    for group in node.groups:
        lat = lat + np.max([_walk(c, dists, pipeline, rng, n) for c in group], axis=0)
    if pipeline and node.queued:
        lat = lat + np.max([_walk(c, dists, pipeline, rng, n) for c in node.queued], axis=0)
    return lat
