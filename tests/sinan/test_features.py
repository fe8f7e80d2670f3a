"""Features and labels: normalisation by SLA, the soft clip, and label alignment in time."""

from __future__ import annotations

import numpy as np

from leanstack.microservices.observation import ClassStats, Observation, TierStats
from leanstack.sinan.features import (
    CHANNELS,
    FAIL_LATENCY,
    HORIZON,
    P99,
    PCT_KEYS,
    WINDOW,
    SinanConstants,
    latency_vector,
    reference_qos_ms,
    samples_from_timeline,
    soft_clip,
    violated,
)


def obs(t: float, p99_a: float, p99_b: float, errors_b: int = 0) -> Observation:
    lat = lambda v: {k: v * (i + 1) / len(PCT_KEYS) for i, k in enumerate(PCT_KEYS)}  # noqa: E731
    return Observation(
        t=t, interval_s=1.0, offered_rps=100.0,
        classes={"a": ClassStats(completed=100, latency_ms={**lat(p99_a), "p99": p99_a},
                                 sla_ms=50.0, sla_key="p99"),
                 "b": ClassStats(completed=100, errors=errors_b,
                                 latency_ms={**lat(p99_b), "p99": p99_b},
                                 sla_ms=100.0, sla_key="p99")},
        tiers={"x": TierStats(cpu_limit=0.5, cpu_used=0.2 + t / 100, rps=100.0),
               "y": TierStats(cpu_limit=0.3, cpu_used=0.1, rps=50.0)})


def test_latency_is_the_worst_class_normalised_by_its_sla():
    v = latency_vector(obs(1, 40.0, 90.0))
    assert v[P99] == np.float32(0.9)  # class b: 90/100 beats class a: 40/50
    v = latency_vector(obs(1, 60.0, 90.0))
    assert v[P99] == np.float32(1.2)
    assert violated(obs(1, 60.0, 90.0)) and not violated(obs(1, 40.0, 90.0))


def test_failed_requests_above_the_tail_count_as_fail_latency():
    o = obs(1, 10.0, 10.0, errors_b=5)  # 5 of 105 failed: above the 1% tail of p99
    assert latency_vector(o)[P99] == FAIL_LATENCY
    assert violated(o)


def test_soft_clip_keeps_values_below_the_knee_and_bounds_the_rest():
    c = SinanConstants()
    y = np.array([0.2, 1.0, c.clip_knee, 2.0, 100.0], dtype=np.float32)
    out = soft_clip(y)
    assert np.allclose(out[:3], y[:3])
    assert c.clip_knee < out[3] < out[4] < c.clip_knee + 1 / c.clip_slope
    assert np.all(np.diff(out) >= 0)


def test_reference_qos_is_the_heaviest_class_sla(app):
    assert reference_qos_ms(app) == 40.0  # hotel: search (60%) has a 40 ms SLA


def test_samples_align_proposal_and_labels_with_the_next_second():
    timeline = []
    for t in range(12):
        e = obs(t + 1, 10.0 + t, 20.0).to_dict()
        e["allocation"] = {"x": {"cpu": 0.1 * (t + 1), "replicas": 1},
                           "y": {"cpu": 0.3, "replicas": 1}}
        timeline.append(e)
    timeline[9]["classes"]["a"]["latency_ms"]["p99"] = 80.0  # violation at index 9
    s = samples_from_timeline(timeline, ["x", "y"])
    n = 12 - (WINDOW - 1) - HORIZON
    assert s["sys"].shape == (n, len(CHANNELS), 2, WINDOW)
    assert s["lat"].shape == (n, len(PCT_KEYS), WINDOW)
    first = WINDOW - 1  # decision after interval 4: proposal is interval 5's allocation
    assert np.isclose(s["proposal"][0, 0], 0.1 * (first + 2))
    assert np.isclose(s["y"][0, P99], (10.0 + first + 1) / 50.0)
    # a violation at index 9 is in the next-4 s window of decisions at indices 5..8 only
    decisions = list(range(first, first + n))
    expect = [d + 1 <= 9 <= d + HORIZON for d in decisions]
    assert s["violation"].astype(bool).tolist() == expect
    # the newest system column is the decision second's own observation
    assert np.isclose(s["sys"][0, CHANNELS.index("cpu_used"), 0, -1], 0.2 + (first + 1) / 100)
