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
every evaluation, so comparing two allocations compares their latencies, not their noise. A
:class:`TreeSample` draws them once per call tree and keeps each visit's latencies, so the
planner's rounds re-sample only the tiers whose chosen point changed.
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
    return TreeSample(tree, pipeline, samples, seed).quantile(dists, q)


class TreeSample:
    """The Monte Carlo sample of one call tree, drawn once and re-used across evaluations.

    Every visit's uniform draws are made here, once (the draws :func:`tree_quantile` makes for
    the same seed), and each visit's latencies are kept per distribution it was evaluated with:
    a planner that tries allocation after allocation recomputes only the visits whose tier moved
    to another profile point, and an allocation seen before costs a dictionary look-up.
    At most ``max_cached`` latency arrays are kept (the least recently used go first).
    """

    def __init__(self, tree: Visit, pipeline: bool, samples: int = SAMPLES, seed: int = 0,
                 max_cached: int = 512) -> None:
        self.tree, self.pipeline, self.samples = tree, pipeline, samples
        self.max_cached = max_cached
        rng = np.random.default_rng(seed)
        self._draws: list[np.ndarray] = []  # per visit, in walk order
        self._tiers: list[str] = []
        self._draw(tree, rng)
        self._latencies: dict[tuple[int, LatencyDist], np.ndarray] = {}
        self._quantiles: dict[tuple, float] = {}

    def quantile(self, dists: dict[str, LatencyDist], q: float) -> float:
        """The ``q`` quantile (0..1) of the end-to-end latency with each tier at ``dists``."""
        key = (q, *(dists[t] for t in self._tiers))
        if key not in self._quantiles:
            self._quantiles[key] = float(np.quantile(self._walk(self.tree, dists, [0]), q))
        return self._quantiles[key]

    def _draw(self, node: Visit, rng: np.random.Generator) -> None:
        self._draws.append(rng.random(self.samples))
        self._tiers.append(node.tier)
        for group in node.groups:
            for c in group:
                self._draw(c, rng)
        if self.pipeline and node.queued:
            for c in node.queued:
                self._draw(c, rng)

    def _visit(self, index: int, dist: LatencyDist) -> np.ndarray:
        key = (index, dist)
        lat = self._latencies.pop(key, None)
        if lat is None:
            lat = dist.at(self._draws[index])
            if len(self._latencies) >= self.max_cached:
                del self._latencies[next(iter(self._latencies))]
        self._latencies[key] = lat  # (re)inserted last: the dict keeps recency order
        return lat

    def _walk(self, node: Visit, dists: dict[str, LatencyDist], at: list[int]) -> np.ndarray:
        lat = self._visit(at[0], dists[node.tier])
        at[0] += 1
        for group in node.groups:
            lat = lat + np.max([self._walk(c, dists, at) for c in group], axis=0)
        if self.pipeline and node.queued:
            lat = lat + np.max([self._walk(c, dists, at) for c in node.queued], axis=0)
        return lat
