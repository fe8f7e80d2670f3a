"""How many QoS violations could be anticipated at all: the ceiling on anticipation.

A violation can only be alerted ``lead`` windows ahead if something in the features already
showed the fault by then. Each violation event (counted as in :func:`metrics.alert_metrics`)
falls in one class:

- ``no_fault``: no fault was in force (a burst of load, a decoy) — nothing to see coming;
- ``onset_under_lead``: the fault began fewer than ``lead`` windows before QoS broke;
- ``no_precursor``: the fault had begun, but none of the culprit tier's channels (nor the
  end-to-end tail) left its healthy range in the windows where an alert would still count;
- ``precursor``: some signal was out of range at least ``lead`` windows ahead.

The *healthy range* of a tier's channel is its ``quantile`` of absolute values over the
windows of fault-free, decoy-free episodes of the same app (taken from the training split).
The share of ``precursor`` events bounds what a detector reading these features can
anticipate without guessing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from leanstack.seer.campaign import Dataset
from leanstack.seer.features import CHANNELS
from leanstack.seer.metrics import MERGE_GAP, runs

CLASSES = ("no_fault", "onset_under_lead", "no_precursor", "precursor")
SIGNALS = tuple(c for c in CHANNELS if c != "e2e_change")
"""Channels looked at for a precursor: every per-tier channel and the end-to-end tail."""


def healthy_range(ds: Dataset, idx: np.ndarray, start: int, quantile: float = 0.995
                  ) -> np.ndarray:
    """Per tier and channel ``[tiers, channels]``, the ``quantile`` of |value| over the
    windows from ``start`` of the fault-free, decoy-free episodes ``idx`` of ``ds`` (infinite
    without any)."""
    clean = [int(e) for e in idx if ds.meta["episodes"][int(e)]["fault"] is None
             and ds.meta["episodes"][int(e)].get("decoy") is None]
    if not clean:
        return np.full(ds.arrays["x"].shape[2:], np.inf)
    x = np.abs(ds.arrays["x"][clean, start:])
    return np.quantile(x.reshape(-1, *x.shape[2:]), quantile, axis=0)


def classify(ds: Dataset, e: int, t: int, fault_window: int, lead: int, horizon: int,
             healthy: np.ndarray) -> str:
    """The class of the violation event starting at window ``t`` of episode ``e``."""
    ep = ds.meta["episodes"][e]
    f = ep["fault"]
    if f is None:
        return "no_fault"
    end = int(np.ceil((f["start_s"] + f["duration_s"]) / float(ds.meta["interval_s"])))
    if not fault_window <= t <= end + MERGE_GAP:
        return "no_fault"
    if t - fault_window < lead:
        return "onset_under_lead"
    lo, hi = max(fault_window, t - horizon), t - lead
    culprit = ds.tiers.index(f["tier"])
    sig = [CHANNELS.index(c) for c in SIGNALS]
    x = np.abs(ds.arrays["x"][e, lo:hi + 1, culprit][:, sig])
    return "precursor" if (x > healthy[culprit, sig]).any() else "no_precursor"


def anticipation_ceiling(tests: list[tuple[Dataset, np.ndarray, np.ndarray | None]], lead: int,
                         horizon: int, start: int) -> dict[str, Any]:
    """Violation events of every episode of ``tests`` (dataset, its :func:`healthy_range`,
    and optionally a detector's alerting windows ``bool [episode, window]``) by class: overall,
    per fault kind and per ramp length (under / at least 4 s). ``ceiling`` is the share with a
    visible precursor; with alerts, ``anticipated`` counts per class the events alerted at
    least ``lead`` windows ahead (as :func:`metrics.alert_metrics` does)."""
    empty = {**{c: 0 for c in CLASSES}, **{f"anticipated_{c}": 0 for c in CLASSES}}
    counts = dict(empty)
    by_kind: dict[str, dict[str, int]] = {}
    by_ramp: dict[str, dict[str, int]] = {}
    for ds, healthy, alerting in tests:
        dt = float(ds.meta["interval_s"])
        for e in range(len(ds)):
            f = ds.meta["episodes"][e]["fault"]
            fw = int(f["start_s"] / dt) if f else 10**9
            for t, _ in runs(ds.arrays["violated"][e]):
                if t < start + lead:
                    continue
                c = classify(ds, e, t, fw, lead, horizon, healthy)
                hit = alerting is not None and bool(
                    alerting[e, max(t - horizon, start):t - lead + 1].any())
                kind = f["kind"] if f and c != "no_fault" else "none"
                ramp = ("ramp_under_4s" if f and f["ramp_s"] < 4 else "ramp_4s_or_more")
                groups = [counts, by_kind.setdefault(kind, dict(empty))]
                if f and c != "no_fault":
                    groups.append(by_ramp.setdefault(ramp, dict(empty)))
                for g in groups:
                    g[c] += 1
                    g[f"anticipated_{c}"] += hit

    def share(d: dict[str, int]) -> dict[str, Any]:
        n = sum(d[c] for c in CLASSES)
        out: dict[str, Any] = {**d, "events": n, "ceiling": d["precursor"] / n if n else None}
        if d["precursor"]:
            out["anticipated_share_of_precursor"] = d["anticipated_precursor"] / d["precursor"]
        return out

    return {**share(counts),
            "by_kind": {k: share(v) for k, v in sorted(by_kind.items())},
            "by_ramp": {k: share(v) for k, v in sorted(by_ramp.items())}}
