"""Per-tier, per-window features: the tiers x time matrix Seer's models read.

Every channel is made comparable across tiers and apps: latencies, rates, in-flight requests and
memory are log-ratios to the tier's own baseline (the median of its first ``warmup`` windows,
assumed healthy); utilisation and throttling are shares; the end-to-end channels are the worst
request class's tail latency over its SLA. A window is one control interval of the backend.

``queue_wait`` is the tier's median own latency (from its spans: latency minus time waiting on
its calls, plus time queued for a queue consumer) less the CPU one visit costs on average
(CPU used / requests served): the time a request waits for the worker rather than runs on it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

from leanstack.microservices.observation import Observation

CHANNELS = ("rps", "inflight", "own_p50", "own_p99", "span_p99", "queue_wait", "cpu_util",
            "throttled", "memory", "e2e_sla", "e2e_change")
"""Feature channels per tier and window, in array order."""

CLIP = 6.0
_EPS = {"rps": 1.0, "inflight": 0.01, "own_p50": 0.05, "own_p99": 0.05, "span_p99": 0.05,
        "queue_wait": 0.05, "memory": 1.0, "e2e": 0.1}


def e2e_ratio(obs: Observation) -> float:
    """The worst class's latency at its SLA percentile over its SLA (0 without traffic)."""
    worst = 0.0
    for c in obs.classes.values():
        if c.completed:
            worst = max(worst, c.latency_ms.get(c.sla_key, 0.0) / c.sla_ms)
    return worst


def violated(obs: Observation) -> bool:
    """True when any request class violated its SLA in this window."""
    return any(c.violated for c in obs.classes.values())


class FeatureExtractor:
    """Turns a stream of observations into feature rows ``[tiers, channels]``.

    Keeps per tier the last seen latencies (a window in which a tier served nothing repeats them)
    and the baseline: the median of the first ``warmup`` windows.
    """

    def __init__(self, tiers: Sequence[str], warmup: int = 10) -> None:
        self.tiers = list(tiers)
        self.warmup = warmup
        self._raw: list[np.ndarray] = []
        self._base: np.ndarray | None = None
        self._last = np.full((len(self.tiers), 4), np.nan)

    def raw(self, obs: Observation) -> np.ndarray:
        """Untransformed values ``[tiers, 9]``: rps, in-flight, own p50/p99, span p99, queue
        wait, utilisation, throttled share, memory (MiB)."""
        out = np.zeros((len(self.tiers), 9))
        for i, name in enumerate(self.tiers):
            ts = obs.tiers.get(name)
            if ts is None:
                continue
            own50 = ts.own_latency_ms.get("p50", math.nan)
            own99 = ts.own_latency_ms.get("p99", math.nan)
            span99 = ts.latency_ms.get("p99", math.nan)
            cpu_per_visit_ms = ts.cpu_used / ts.rps * 1e3 if ts.rps > 0 else 0.0
            wait = max(own50 - cpu_per_visit_ms, 0.0) if not math.isnan(own50) else math.nan
            lat = np.array([own50, own99, span99, wait])
            lat = np.where(np.isnan(lat), self._last[i], lat)
            self._last[i] = lat
            util = ts.cpu_used / ts.cpu_limit if ts.cpu_limit > 0 else 0.0
            throttled = ts.throttled_s / max(obs.interval_s, 1e-9)
            out[i] = [ts.rps, ts.inflight, *lat, util, throttled, ts.memory_bytes / 2**20]
        return out

    def push(self, obs: Observation) -> np.ndarray:
        """Features of one more window: ``float32 [tiers, len(CHANNELS)]``."""
        raw = self.raw(obs)
        e2e = e2e_ratio(obs)
        if self._base is None:
            self._raw.append(np.concatenate([raw, np.full((len(self.tiers), 1), e2e)], axis=1))
            with warnings.catch_warnings():  # a tier idle so far has no baseline yet
                warnings.simplefilter("ignore", RuntimeWarning)
                base = np.nanmedian(np.stack(self._raw), axis=0)
            if len(self._raw) >= self.warmup:
                self._base, self._raw = base, []
        else:
            base = self._base
        base = np.nan_to_num(base, nan=0.0)
        raw = np.nan_to_num(raw, nan=0.0)

        def ratio(col: int, eps: float) -> np.ndarray:
            return np.log((raw[:, col] + eps) / (base[:, col] + eps))

        feats = np.stack([
            ratio(0, _EPS["rps"]), ratio(1, _EPS["inflight"]), ratio(2, _EPS["own_p50"]),
            ratio(3, _EPS["own_p99"]), ratio(4, _EPS["span_p99"]), ratio(5, _EPS["queue_wait"]),
            raw[:, 6], raw[:, 7], ratio(8, _EPS["memory"]),
            np.full(len(self.tiers), math.log(e2e + _EPS["e2e"])),
            np.full(len(self.tiers), math.log((e2e + _EPS["e2e"])
                                              / (base[0, 9] + _EPS["e2e"]))),
        ], axis=1)
        return np.clip(feats, -CLIP, CLIP).astype(np.float32)


def episode_features(observations: Sequence[Observation], tiers: Sequence[str],
                     warmup: int = 10) -> np.ndarray:
    """Features of a whole run: ``float32 [windows, tiers, channels]``."""
    fx = FeatureExtractor(tiers, warmup)
    return np.stack([fx.push(o) for o in observations])
