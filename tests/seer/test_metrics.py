"""Scoring alerts and culprit rankings against ground truth."""

from __future__ import annotations

import numpy as np

from leanstack.seer.metrics import alert_metrics, diagnosis_windows, merge, runs, topk, wilson


def _row(n, on):
    r = np.zeros(n, bool)
    r[list(on)] = True
    return r


def test_runs_merge_short_gaps():
    assert runs(_row(20, [1, 2, 4, 10, 11])) == [(1, 4), (10, 11)]
    assert runs(np.zeros(5, bool)) == []


def test_anticipation_needs_the_lead_time():
    viol = np.stack([_row(40, range(20, 25)), _row(40, range(30, 33))])
    early = np.stack([_row(40, range(16, 19)), _row(40, [])])  # 4 windows ahead of the first
    late = np.stack([_row(40, [19]), _row(40, [])])  # 1 window ahead: too late for lead 2
    m = alert_metrics(early, viol, lead=2, horizon=5, start=10, interval_s=1.0)
    assert m["violations"] == 2 and m["anticipated"] == 1 and m["anticipation"] == 0.5
    assert m["lead_time_s"] == 4.0 and m["precision"] == 1.0
    assert alert_metrics(late, viol, 2, 5, 10, 1.0)["anticipated"] == 0


def test_false_alerts_lower_precision_and_count_per_hour():
    viol = np.stack([_row(100, [50])])
    al = np.stack([_row(100, [20, 47, 48])])  # one false (20), one true (47-48)
    m = alert_metrics(al, viol, 2, 5, 10, 1.0)
    assert m["alerts"] == 2 and m["precision"] == 0.5
    assert abs(m["false_alerts_per_hour"] - 3600 / 90) < 1e-9
    both = merge([m, m])
    assert both["alerts"] == 4 and both["precision"] == 0.5


def test_warmup_events_are_not_counted():
    viol = np.stack([_row(30, [3, 4])])
    al = np.stack([_row(30, [1])])
    m = alert_metrics(al, viol, 2, 5, 10, 1.0)
    assert m["violations"] == 0 and m["alerts"] == 0 and m["anticipation"] is None


def test_topk_and_diagnosis_windows():
    r = topk([[2, 0, 1], [0, 1, 2]], [2, 1])
    assert (r["n"], r["top1"], r["top3"]) == (2, 0.5, 1.0)
    assert r["top1_ci95"][0] < 0.5 < r["top1_ci95"][1]
    viol = np.stack([_row(40, [12, 30]), _row(40, [31]), _row(40, [33])])
    pairs = diagnosis_windows(viol, np.array([1, 0, -1]), np.array([25, 20, 10**9]), 10)
    assert pairs == [(0, 30), (1, 31)]


def test_wilson_interval_narrows_with_more_episodes():
    small, large = wilson(3, 10), wilson(300, 1000)
    assert small[0] < 0.3 < small[1] and large[0] < 0.3 < large[1]
    assert large[1] - large[0] < (small[1] - small[0]) / 5
    assert wilson(0, 0) is None
    assert wilson(0, 20)[0] == 0.0 and wilson(20, 20)[1] == 1.0
