"""Sinan's inputs and labels, built from Observations: one code path for training and control.

Per decision second ``t`` (after observing interval ``t``):

- **system** ``(CHANNELS, tiers, WINDOW)``: per tier, the last ``WINDOW`` seconds of RPS,
  replicas, CPU limit, CPU used, memory and throttled time. The paper's sixth channel is the
  page-cache memory, which our backends do not report; throttled seconds take its place.
- **latency** ``(len(PERCENTILES), WINDOW)``: the app's end-to-end latency percentiles over the
  last ``WINDOW`` seconds, in units of the reference QoS (see below).
- **proposal** ``(tiers,)``: the CPU allocation proposed for the next second, in cores.
- labels: the next second's latency percentiles (same units) and whether any class violates
  its SLA in the next ``HORIZON`` seconds while the proposal is still in force (a later cut of
  some tier ends the look-ahead: its violations are that cut's, not this proposal's).

Multi-class apps. The paper has one end-to-end p99 target per app; our apps give each request
class its own SLA. We predict the *worst class's* latency normalised by its SLA: for each
percentile ``p``, ``y_p = max_c latency_c[p] / sla_c`` (a class with failed requests above its
allowed tail counts as ``FAIL_LATENCY``). ``y_p99 > 1`` is then exactly "some class with a p99 SLA
violates". In ms the value is ``y * qos_ms`` with ``qos_ms`` the SLA of the class with the largest
mix weight (the *reference QoS*); the paper's constants scale with it (see ``SinanConstants``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from leanstack.microservices.app import AppSpec
from leanstack.microservices.observation import (
    PERCENTILES,
    Allocation,
    Observation,
    TierAllocation,
    failures_break_sla,
)

WINDOW = 5
"""Seconds of history the model sees (the paper's 5 s)."""

HORIZON = 4
"""The violation predictor's look-ahead, in seconds (the paper's 4 s)."""

CHANNELS = ("rps", "replicas", "cpu_limit", "cpu_used", "memory_mb", "throttled_s")
"""Per-tier feature channels, in array order."""

PCT_KEYS = tuple(f"p{p:g}" for p in PERCENTILES)
"""Latency percentiles in array order (``p50`` ... ``p99.9``)."""

P99 = PCT_KEYS.index("p99")
"""Index of p99 in the latency arrays."""

FAIL_LATENCY = 3.0
"""Normalised latency given to a class whose failed requests alone break its SLA."""

RPS_SCALE = 100.0
"""Tier RPS is fed to the model divided by this (inputs near 1 train better)."""


@dataclass(frozen=True)
class SinanConstants:
    """The paper's latency constants, scaled from its QoS (500 ms) to ours, in QoS units.

    margin: 30 ms below QoS -> 0.06; latency bucket 100 ms -> 0.2; soft-clip knee QoS + 5 ms ->
    1.01 with slope 0.01 per ms -> 5.0 per QoS unit.
    """

    margin: float = 30.0 / 500.0
    bucket: float = 100.0 / 500.0
    clip_knee: float = 1.0 + 5.0 / 500.0
    clip_slope: float = 0.01 * 500.0


def reference_qos_ms(app: AppSpec) -> float:
    """The SLA (ms) of the class with the largest mix weight: the unit latencies are shown in."""
    top = max(app.classes.values(), key=lambda c: c.weight)
    return top.sla.ms


def soft_clip(y: np.ndarray, c: SinanConstants = SinanConstants()) -> np.ndarray:
    """The paper's label clip above QoS: ``d + (y - d) / (1 + k (y - d))`` for ``y > d``."""
    y = np.asarray(y, dtype=np.float32)
    over = np.maximum(y - c.clip_knee, 0.0)
    return np.where(y > c.clip_knee, c.clip_knee + over / (1.0 + c.clip_slope * over), y)


def latency_vector(obs: Observation) -> np.ndarray:
    """Worst-class latency per percentile, normalised by each class's SLA (see module doc)."""
    out = np.zeros(len(PCT_KEYS), dtype=np.float32)
    for stats in obs.classes.values():
        if stats.completed + stats.errors == 0 or stats.sla_ms <= 0:
            continue
        if failures_break_sla(stats.completed, stats.errors, stats.sla_key):
            out[:] = np.maximum(out, FAIL_LATENCY)
            continue
        vals = [stats.latency_ms.get(k, 0.0) / stats.sla_ms for k in PCT_KEYS]
        out = np.maximum(out, np.minimum(np.asarray(vals, dtype=np.float32), FAIL_LATENCY))
    return out


def violated(obs: Observation) -> bool:
    """Whether any class violates its SLA in ``obs`` (the one rule, ``sla_violated``)."""
    return any(s.violated for s in obs.classes.values())


def tier_matrix(obs: Observation, tiers: Sequence[str]) -> np.ndarray:
    """One second's ``(CHANNELS, tiers)`` system features."""
    m = np.zeros((len(CHANNELS), len(tiers)), dtype=np.float32)
    for j, name in enumerate(tiers):
        s = obs.tiers.get(name)
        if s is None:
            continue
        m[:, j] = (s.rps / RPS_SCALE, s.replicas, s.cpu_limit, s.cpu_used,
                   s.memory_bytes / 2**20 / 100.0, s.throttled_s)
    return m


def window(history: Sequence[Observation], end: int) -> list[Observation]:
    """The ``WINDOW`` observations ending at index ``end``, the oldest repeated when too few."""
    start = end - WINDOW + 1
    return [history[max(i, 0)] for i in range(start, end + 1)]


def state_arrays(history: Sequence[Observation], end: int,
                 tiers: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """System ``(CHANNELS, tiers, WINDOW)`` and latency ``(percentiles, WINDOW)`` at ``end``."""
    win = window(history, end)
    sys_x = np.stack([tier_matrix(o, tiers) for o in win], axis=-1)
    lat_x = np.stack([latency_vector(o) for o in win], axis=-1)
    return sys_x, lat_x


def proposal_vector(allocation: Allocation, tiers: Sequence[str]) -> np.ndarray:
    """Cores per tier of a proposed allocation, in ``tiers`` order."""
    return np.array([allocation.tiers[n].cpu for n in tiers], dtype=np.float32)


def samples_from_timeline(timeline: Sequence[dict], tiers: Sequence[str]) -> dict[str, np.ndarray]:
    """Training samples from one run's ExperimentResult timeline.

    Entry ``i`` holds the observation of interval ``i`` and the allocation in force during it,
    so the allocation proposed at the end of interval ``i`` is entry ``i + 1``'s. A sample needs
    the next ``HORIZON`` seconds for its labels; the first ``WINDOW - 1`` seconds (warm-up at max)
    are skipped.
    """
    obs = [Observation.from_dict(e) for e in timeline]
    allocs = [allocation_from_dict(e["allocation"]) for e in timeline]
    lat = [latency_vector(o) for o in obs]
    viol = [violated(o) for o in obs]
    sys_l, lat_l, prop_l, y_l, v_l = [], [], [], [], []
    for i in range(WINDOW - 1, len(obs) - HORIZON):
        sys_x, lat_x = state_arrays(obs, i, tiers)
        sys_l.append(sys_x)
        lat_l.append(lat_x)
        prop_l.append(proposal_vector(allocs[i + 1], tiers))
        y_l.append(lat[i + 1])
        v_l.append(_violation_ahead(viol, allocs, i))
    n_t, n_p = len(tiers), len(PCT_KEYS)
    return {
        "sys": np.asarray(sys_l, dtype=np.float32).reshape(-1, len(CHANNELS), n_t, WINDOW),
        "lat": np.asarray(lat_l, dtype=np.float32).reshape(-1, n_p, WINDOW),
        "proposal": np.asarray(prop_l, dtype=np.float32).reshape(-1, n_t),
        "y": np.asarray(y_l, dtype=np.float32).reshape(-1, n_p),
        "violation": np.asarray(v_l, dtype=np.int8),
    }


def _violation_ahead(viol: Sequence[bool], allocs: Sequence[Allocation], i: int) -> bool:
    """A violation in the next ``HORIZON`` seconds while the proposal (``allocs[i + 1]``) was
    still in force, i.e. no tier had dropped below it. The booster sees the proposal repeated
    for the horizon, i.e. held; violations after a further cut belong to that cut's sample."""
    proposal = allocs[i + 1].tiers
    for k in range(i + 1, i + 1 + HORIZON):
        if any(t.cpu < proposal[n].cpu - 1e-9 for n, t in allocs[k].tiers.items()):
            return False
        if viol[k]:
            return True
    return False


def allocation_from_dict(d: dict[str, dict[str, float]]) -> Allocation:
    """The inverse of ``Allocation.to_dict``."""
    return Allocation({n: TierAllocation(float(t["cpu"]), int(t["replicas"]))
                       for n, t in d.items()})
