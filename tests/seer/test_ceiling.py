"""The anticipation ceiling: which violations showed a precursor early enough."""

from __future__ import annotations

import numpy as np

from leanstack.seer.campaign import Dataset
from leanstack.seer.ceiling import anticipation_ceiling, classify, healthy_range
from leanstack.seer.features import CHANNELS

C = {c: i for i, c in enumerate(CHANNELS)}


def _fault(start: float, ramp: float = 5.0) -> dict:
    return {"kind": "cpu_hog", "tier": "t1", "start_s": start, "duration_s": 20.0,
            "severity": 0.9, "ramp_s": ramp}


def dataset() -> Dataset:
    """Episodes 0-3 break QoS at window 20: a visible ramp on the culprit from window 15, a
    fault that shows nothing before, a fault that began 1 window before, no fault at all;
    episodes 4-7 are healthy noise."""
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.05, (8, 40, 3, len(CHANNELS))).astype(np.float32)
    viol = np.zeros((8, 40), bool)
    viol[:4, 20:23] = True
    x[0, 15:, 1, C["own_p50"]] += np.linspace(0.5, 3.0, 25)
    faults = [_fault(15), _fault(15, ramp=2.0), _fault(19), None, None, None, None, None]
    arrays = {"x": x, "violated": viol, "fault_active": np.zeros_like(viol),
              "culprit": np.array([1, 1, 1, -1, -1, -1, -1, -1]),
              "label_violation": viol, "label_culprit": np.full((8, 40), -1)}
    meta = {"app": "toy", "tiers": ["t0", "t1", "t2"], "channels": list(CHANNELS),
            "interval_s": 1.0, "horizon_s": 5.0, "warmup_windows": 10,
            "episodes": [{"fault": f, "decoy": None} for f in faults]}
    return Dataset(arrays, meta)


def test_each_violation_gets_its_class_and_alerts_are_counted_per_class():
    ds = dataset()
    healthy = healthy_range(ds, np.arange(4, 8), start=10)
    assert healthy.shape == (3, len(CHANNELS)) and (healthy < 0.3).all()
    assert [classify(ds, e, 20, fw, 2, 5, healthy) for e, fw in
            ((0, 15), (1, 15), (2, 19), (3, 10**9))] == [
        "precursor", "no_precursor", "onset_under_lead", "no_fault"]
    alerting = np.zeros((8, 40), bool)
    alerting[0, 16:24] = True  # 4 windows ahead of episode 0's violation
    alerting[1, 19:24] = True  # 1 window ahead: too late to count
    r = anticipation_ceiling([(ds, healthy, alerting)], lead=2, horizon=5, start=10)
    assert r["events"] == 4 and r["ceiling"] == 0.25
    assert r["anticipated_precursor"] == 1 and r["anticipated_no_precursor"] == 0
    assert r["by_ramp"]["ramp_under_4s"]["no_precursor"] == 1
    assert r["by_kind"]["none"]["no_fault"] == 1


def test_without_clean_episodes_nothing_counts_as_a_precursor():
    ds = dataset()
    healthy = healthy_range(ds, np.arange(0, 3), start=10)  # only faulted episodes
    assert np.isinf(healthy).all()
    r = anticipation_ceiling([(ds, healthy, None)], lead=2, horizon=5, start=10)
    assert r["precursor"] == 0 and r["anticipated_precursor"] == 0
