"""How alerts and culprit rankings are scored against an episode's ground truth.

Windows are control intervals; window ``t`` ends at ``(t + 1) * interval``. A violation *event*
starts at a violated window whose previous ``MERGE_GAP`` windows were all fine. It is
*anticipated* when an alert was up at some window ``a`` with ``t - horizon <= a <= t - lead``
(the alert came at least ``lead`` windows before the window whose tail latency broke the SLA).
An *alert* is a run of alerting windows (gaps up to ``MERGE_GAP`` merged); it is *true* when a
violated window falls inside it or within ``horizon`` windows after it (or it started during
one).
"""

from __future__ import annotations

from typing import Any

import numpy as np

MERGE_GAP = 2


CLEAR_RATIO = 0.5
"""An alert, once raised at the threshold, stays up until P(violation) falls below this share
of the threshold (hysteresis: one fault makes one alert, not a flicker of them)."""


def hysteresis(p: np.ndarray, on: float, clear_ratio: float = CLEAR_RATIO) -> np.ndarray:
    """``bool`` alerting windows over the last axis of ``p``: raised at ``p >= on``, held
    while ``p >= on * clear_ratio``."""
    p = np.asarray(p)
    out = np.zeros(p.shape, bool)
    up = np.zeros(p.shape[:-1], bool)
    off = on * clear_ratio
    for t in range(p.shape[-1]):
        up = np.where(up, p[..., t] >= off, p[..., t] >= on)
        out[..., t] = up
    return out


def runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """``(first, last)`` windows of each run of True, runs closer than ``MERGE_GAP`` windows
    merged."""
    out: list[tuple[int, int]] = []
    for t in np.flatnonzero(flags):
        t = int(t)
        if out and t - out[-1][1] <= MERGE_GAP + 1:
            out[-1] = (out[-1][0], t)
        else:
            out.append((t, t))
    return out


def alert_metrics(alerting: np.ndarray, violated: np.ndarray, lead: int, horizon: int,
                  start: int, interval_s: float) -> dict[str, Any]:
    """Anticipation, precision, false alerts per hour and lead times over episodes.

    ``alerting`` and ``violated`` are ``bool [episode, window]``; events before window
    ``start`` (the warm-up, in which no alert may be raised) are not counted.
    """
    events = anticipated = true_alerts = n_alerts = 0
    leads: list[float] = []
    for al, vi in zip(alerting, violated, strict=True):
        al = al.copy()
        al[:start] = False
        for t, _ in runs(vi):
            if t < start + lead:
                continue
            events += 1
            lo, hi = max(t - horizon, 0), t - lead
            hits = np.flatnonzero(al[lo:hi + 1])
            if hits.size:
                anticipated += 1
                leads.append(float((t - (lo + hits[0])) * interval_s))
        for a, z in runs(al):
            n_alerts += 1
            true_alerts += bool(vi[max(a - MERGE_GAP, 0):z + horizon + 1].any())
    hours = alerting.shape[0] * max(alerting.shape[1] - start, 1) * interval_s / 3600.0
    return summarise({"violations": events, "anticipated": anticipated, "alerts": n_alerts,
                      "true_alerts": true_alerts, "hours": hours, "leads": leads})


def wilson(k: int, n: int, z: float = 1.96) -> list[float] | None:
    """95% Wilson score interval ``[low, high]`` of the share ``k / n`` (``None`` when n = 0)."""
    if n <= 0:
        return None
    p = k / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, float(mid - half)), 4), round(min(1.0, float(mid + half)), 4)]


def summarise(counts: dict[str, Any]) -> dict[str, Any]:
    """Rates from the counts :func:`alert_metrics` keeps (so counts of several test sets can be
    added up and summarised again with :func:`merge`)."""
    events, n_alerts, leads = counts["violations"], counts["alerts"], counts["leads"]
    return {
        **counts,
        "anticipation": counts["anticipated"] / events if events else None,
        "anticipation_ci95": wilson(counts["anticipated"], events),
        "precision": counts["true_alerts"] / n_alerts if n_alerts else None,
        "precision_ci95": wilson(counts["true_alerts"], n_alerts),
        "false_alerts_per_hour": ((n_alerts - counts["true_alerts"]) / counts["hours"]
                                  if counts["hours"] else None),
        "lead_time_s": float(np.median(leads)) if leads else None,
        "lead_time_s_mean": float(np.mean(leads)) if leads else None,
    }


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Add up the counts of several :func:`alert_metrics` results and summarise them."""
    keys = ("violations", "anticipated", "alerts", "true_alerts", "hours")
    counts: dict[str, Any] = {k: sum(p[k] for p in parts) for k in keys}
    counts["leads"] = [x for p in parts for x in p["leads"]]
    return summarise(counts)


def topk(rankings: list[list[int]], truth: list[int]) -> dict[str, Any]:
    """Top-1 and top-3 accuracy of culprit rankings (tier indices, most likely first)."""
    if not truth:
        return {"n": 0, "top1": None, "top3": None, "top1_ci95": None}
    hits1 = sum(r[:1] == [c] for r, c in zip(rankings, truth, strict=True))
    top3 = sum(c in r[:3] for r, c in zip(rankings, truth, strict=True)) / len(truth)
    return {"n": len(truth), "top1": hits1 / len(truth), "top3": top3,
            "top1_ci95": wilson(hits1, len(truth))}


def diagnosis_windows(violated: np.ndarray, culprit: np.ndarray, fault_start: np.ndarray,
                      start: int) -> list[tuple[int, int]]:
    """``(episode, window)`` pairs where culprit finders are compared: the first violated
    window at or after the fault began, in every faulted episode that violated QoS."""
    out = []
    for e, (vi, c, fs) in enumerate(zip(violated, culprit, fault_start, strict=True)):
        if c < 0:
            continue
        hits = np.flatnonzero(vi[max(int(fs), start):])
        if hits.size:
            out.append((e, int(max(int(fs), start) + hits[0])))
    return out
