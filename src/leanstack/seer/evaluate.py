"""The comparison harness: Seer's network, its CNN-only and LSTM-only ablations, the threshold
rule, Sinan's boosted tree and BARO, scored on the very same held-out episodes.

Alerts (anticipation, precision, false alerts per hour, lead time) come from each method's
per-window score and the threshold it picked on the validation split. Culprit finders (Seer's
networks, the threshold rule, BARO, RCAEval's N-Sigma) are compared at the same *diagnosis
windows* (the first violated window after a fault began, in each faulted episode that violated
QoS), each given the history up to that window, on all of them and on those of episodes with a
decoy; Seer is also scored at its own first true alert of each faulted episode.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from leanstack.seer.baselines import (
    BoostedTree,
    ThresholdRule,
    baro_ranking,
    nsigma_ranking,
    tree_inputs,
)
from leanstack.seer.campaign import Dataset
from leanstack.seer.faults import SUDDEN_RAMP_S
from leanstack.seer.metrics import (
    alert_metrics,
    diagnosis_windows,
    hysteresis,
    merge,
    topk,
    wilson,
)
from leanstack.seer.model import VARIANTS, SeerModel
from leanstack.seer.train import TrainConfig, pick_threshold, score, start_window, steps, train
from leanstack.seer.train import windows as make_windows

Split = tuple[Dataset, np.ndarray]
"""A dataset and the episode indices taken from it."""


def fault_start_windows(ds: Dataset) -> np.ndarray:
    """Per episode, the window its fault began in (a large number without a fault)."""
    dt = float(ds.meta["interval_s"])
    return np.array([int(e["fault"]["start_s"] / dt) if e["fault"] else 10**9
                     for e in ds.meta["episodes"]])


FAST_RAMP_S = SUDDEN_RAMP_S[1]
"""Faults reaching full strength in less than this are *fast*: reported apart."""


def ramp_groups(ds: Dataset) -> dict[str, np.ndarray]:
    """Episode indices by fault ramp: under :data:`FAST_RAMP_S`, at least that, no fault."""
    ramps = [e["fault"]["ramp_s"] if e["fault"] else None for e in ds.meta["episodes"]]
    return {"ramp_under_4s": np.array([i for i, r in enumerate(ramps)
                                       if r is not None and r < FAST_RAMP_S], int),
            "ramp_4s_or_more": np.array([i for i, r in enumerate(ramps)
                                         if r is not None and r >= FAST_RAMP_S], int),
            "no_fault": np.array([i for i, r in enumerate(ramps) if r is None], int)}


def alerts_by_ramp(p: np.ndarray, ds: Dataset, thr: float, cfg: TrainConfig
                   ) -> dict[str, dict[str, Any]]:
    """:func:`alert_eval` counts per ramp group of :func:`ramp_groups` (merge them with
    :func:`merge`)."""
    return {g: alert_eval(p[idx], ds.subset(idx), thr, cfg)
            for g, idx in ramp_groups(ds).items() if idx.size}


def alert_eval(p: np.ndarray, ds: Dataset, thr: float, cfg: TrainConfig) -> dict[str, Any]:
    return alert_metrics(hysteresis(p, thr), ds.arrays["violated"], steps(ds, cfg.lead_s),
                         steps(ds, cfg.horizon_s), start_window(ds, cfg.lookback),
                         float(ds.meta["interval_s"]))


def culprit_at_first_alert(p: np.ndarray, c: np.ndarray, ds: Dataset, thr: float,
                           cfg: TrainConfig) -> dict[str, Any]:
    """Top-k of the ranking at the first true alert after each fault began."""
    h, start = steps(ds, cfg.horizon_s), start_window(ds, cfg.lookback)
    rankings, truth = [], []
    for e, fs in enumerate(fault_start_windows(ds)):
        cul = int(ds.arrays["culprit"][e])
        if cul < 0:
            continue
        vi = ds.arrays["violated"][e]
        for a in np.flatnonzero(hysteresis(p[e], thr)):
            if a >= max(fs, start) and vi[a:a + h + 1].any():
                rankings.append([int(i) for i in np.argsort(-c[e, a], kind="stable")])
                truth.append(cul)
                break
    return topk(rankings, truth)


def diagnosis_pairs(ds: Dataset, cfg: TrainConfig) -> list[tuple[int, int]]:
    return diagnosis_windows(ds.arrays["violated"], ds.arrays["culprit"],
                             fault_start_windows(ds), start_window(ds, cfg.lookback))


def with_decoy(ds: Dataset, pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The diagnosis windows of episodes that also hold a decoy (a milder anomaly on another
    tier): the harder culprit cases."""
    return [(e, t) for e, t in pairs if ds.meta["episodes"][e].get("decoy")]


def culprit_eval(tests: list[Split], cfg: TrainConfig,
                 ranker: Callable[[Dataset, int, int], list[int]]) -> dict[str, Any]:
    """Top-k of ``ranker(dataset, episode, window)`` at the diagnosis windows of ``tests``, on
    all of them (``culprit``) and on those of episodes with a decoy (``culprit_decoy``)."""
    every, decoy = [], []
    for ds, idx in tests:
        sub = ds.subset(idx)
        pairs = diagnosis_pairs(sub, cfg)
        every.append(rank_at(pairs, sub, lambda e, t, sub=sub: ranker(sub, e, t)))
        decoy.append(rank_at(with_decoy(sub, pairs), sub, lambda e, t, sub=sub: ranker(sub, e,
                                                                                        t)))
    return {"culprit": merge_topk(every), "culprit_decoy": merge_topk(decoy)}


def rank_at(pairs: list[tuple[int, int]], ds: Dataset,
            ranker: Callable[[int, int], list[int]]) -> dict[str, Any]:
    rankings = [ranker(e, t) for e, t in pairs]
    return topk(rankings, [int(ds.arrays["culprit"][e]) for e, _ in pairs])


def merge_topk(parts: list[dict[str, Any]]) -> dict[str, Any]:
    n = sum(p["n"] for p in parts)
    if not n:
        return {"n": 0, "top1": None, "top3": None, "top1_ci95": None}
    hits1 = round(sum(p["top1"] * p["n"] for p in parts if p["n"]))
    return {"n": n, "top1": hits1 / n,
            "top3": sum(p["top3"] * p["n"] for p in parts if p["n"]) / n,
            "top1_ci95": wilson(hits1, n)}


def _clean(m: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in m.items() if k != "leads"}


def evaluate_model(model: SeerModel, tests: list[Split], cfg: TrainConfig) -> dict[str, Any]:
    """One trained network on the test episodes: alerts, culprit at first alert and at the
    diagnosis windows, inference time per window."""
    alerts, first, diag, decoy = [], [], [], []
    by_ramp: dict[str, list[dict[str, Any]]] = {}
    infer_s, n_win = 0.0, 0
    for ds, idx in tests:
        sub = ds.subset(idx)
        t0 = time.perf_counter()
        p, c = score(model, sub)
        infer_s += time.perf_counter() - t0
        n_win += p.size
        alerts.append(alert_eval(p, sub, model.threshold, cfg))
        for g, m in alerts_by_ramp(p, sub, model.threshold, cfg).items():
            by_ramp.setdefault(g, []).append(m)
        first.append(culprit_at_first_alert(p, c, sub, model.threshold, cfg))
        pairs = diagnosis_pairs(sub, cfg)

        def ranking(e: int, t: int, c: np.ndarray = c) -> list[int]:
            return [int(i) for i in np.argsort(-c[e, t], kind="stable")]

        diag.append(rank_at(pairs, sub, ranking))
        decoy.append(rank_at(with_decoy(sub, pairs), sub, ranking))
    return {"alerts": _clean(merge(alerts)),
            "alerts_by_ramp": {g: _clean(merge(ms)) for g, ms in by_ramp.items()},
            "culprit_at_first_alert": merge_topk(first),
            "culprit": merge_topk(diag), "culprit_decoy": merge_topk(decoy),
            "threshold": model.threshold,
            "batched_inference_ms_per_window": 1e3 * infer_s / max(n_win, 1)}


def compare(trains: list[Split], vals: list[Split], tests: list[Split], cfg: TrainConfig,
            methods: tuple[str, ...] = (*VARIANTS, "threshold", "boosted_tree", "baro",
                                        "nsigma"),
            progress: bool = True) -> tuple[dict[str, Any], dict[str, SeerModel]]:
    """Train every learned method on ``trains`` (threshold on ``vals``), score all on
    ``tests``; return the results per method and the trained networks."""
    out: dict[str, Any] = {}
    models: dict[str, SeerModel] = {}
    for variant in [m for m in methods if m in VARIANTS]:
        vcfg = replace(cfg, variant=variant)
        model, meta = train([d for d, _ in trains], vcfg, progress,
                            train_episodes=[i for _, i in trains],
                            val_episodes=[i for _, i in vals])
        models[variant] = model
        out[variant] = {**evaluate_model(model, tests, vcfg), "train_s": meta["train_s"],
                        "parameters": meta["parameters"], "size_bytes": model.size_bytes()}
    if "threshold" in methods:
        out["threshold"] = _threshold_rule(vals, tests, cfg)
    if "boosted_tree" in methods:
        out["boosted_tree"] = _boosted_tree(trains, vals, tests, cfg)
    if "baro" in methods:
        out["baro"] = culprit_eval(tests, cfg, lambda d, e, t: baro_ranking(
            d.arrays["x"][e, :t + 1], d.tiers))
    if "nsigma" in methods:
        out["nsigma"] = culprit_eval(tests, cfg, lambda d, e, t: nsigma_ranking(
            d.arrays["x"][e, :t + 1], d.tiers, int(fault_start_windows(d)[e])))
    return out, models


def _threshold_rule(vals: list[Split], tests: list[Split], cfg: TrainConfig) -> dict[str, Any]:
    rule = ThresholdRule()
    subs = [ds.subset(i) for ds, i in vals]
    width = min(s.arrays["violated"].shape[1] for s in subs)
    ds0 = subs[0]
    k, _ = pick_threshold(np.concatenate([rule.scores(s)[:, :width] for s in subs]),
                          np.concatenate([s.arrays["violated"][:, :width] for s in subs]),
                          steps(ds0, cfg.lead_s), steps(ds0, cfg.horizon_s),
                          start_window(ds0, cfg.lookback), float(ds0.meta["interval_s"]),
                          cfg.min_precision)
    alerts = [alert_eval(rule.scores(ds.subset(i)), ds.subset(i), k, cfg) for ds, i in tests]
    ramps = [alerts_by_ramp(rule.scores(ds.subset(i)), ds.subset(i), k, cfg) for ds, i in tests]
    culprit = culprit_eval(tests, cfg, lambda d, e, t: ThresholdRule.ranking(d.arrays["x"][e, t]))
    return {"k": k, "alerts": _clean(merge(alerts)), "alerts_by_ramp": _merge_groups(ramps),
            **culprit}


def _merge_groups(parts: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    groups = sorted({g for p in parts for g in p})
    return {g: _clean(merge([p[g] for p in parts if g in p])) for g in groups}


def _boosted_tree(trains: list[Split], vals: list[Split], tests: list[Split],
                  cfg: TrainConfig) -> dict[str, Any]:
    def stack(splits: list[Split]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for ds, idx in splits:  # tree inputs aggregate over tiers, so apps stack
            x, y, _, _ = make_windows(ds.subset(idx), cfg.lookback, steps(ds, cfg.horizon_s))
            xs.append(tree_inputs(x))
            ys.append(y)
        return np.concatenate(xs), np.concatenate(ys)

    t0 = time.monotonic()
    tree = BoostedTree(seed=cfg.seed).fit(*stack(trains), *stack(vals))
    train_s = time.monotonic() - t0

    def scores(sub: Dataset) -> np.ndarray:
        xs, _, _, idx = make_windows(sub, cfg.lookback, 1, last=True)
        p = np.zeros(sub.arrays["violated"].shape, np.float32)
        p[idx[:, 0], idx[:, 1]] = tree.predict(xs)
        return p

    subs = [ds.subset(i) for ds, i in vals]
    width = min(s.arrays["violated"].shape[1] for s in subs)
    ds0 = subs[0]
    thr, _ = pick_threshold(np.concatenate([scores(s)[:, :width] for s in subs]),
                            np.concatenate([s.arrays["violated"][:, :width] for s in subs]),
                            steps(ds0, cfg.lead_s), steps(ds0, cfg.horizon_s),
                            start_window(ds0, cfg.lookback), float(ds0.meta["interval_s"]),
                            cfg.min_precision)
    alerts = [alert_eval(scores(ds.subset(i)), ds.subset(i), thr, cfg) for ds, i in tests]
    ramps = [alerts_by_ramp(scores(ds.subset(i)), ds.subset(i), thr, cfg) for ds, i in tests]
    return {"threshold": thr, "alerts": _clean(merge(alerts)),
            "alerts_by_ramp": _merge_groups(ramps), "train_s": round(train_s, 2)}


def online_eval(app: Any, model: SeerModel, episodes: int, seed: int = 0,
                backend: str = "sim", interval_s: float = 1.0,
                kinds: tuple[str, ...] | None = None, rps: float | None = None,
                on_episode: Callable[[int, int], None] | None = None,
                boost_threshold: float | None = None) -> dict[str, Any]:
    """A fresh fault campaign on ``app`` under HPA, each episode run twice on the same seeds:
    with the Seer detector only watching (alerts, anticipation, culprit) and with it acting
    (boosting the culprit; from P(violation) >= ``boost_threshold`` when given, else from the
    alert threshold). Returns the headline metrics and the per-episode outcomes."""
    from leanstack.seer.campaign import observations, plan_campaign, run_episode
    from leanstack.seer.detector import SeerDetector
    from leanstack.seer.faults import FAULT_KINDS, kinds_for
    from leanstack.seer.features import violated

    plans = [replace(p, controller="hpa")
             for p in plan_campaign(app, episodes, seed, kinds_for(backend, kinds or FAULT_KINDS),
                                    rps=rps)]
    tiers = list(app.services)
    lead = max(1, round(float(model.meta["lead_s"]) / interval_s))
    horizon = max(1, round(float(model.meta["horizon_s"]) / interval_s))
    start = max(10, model.lookback)
    alerting, viol, acted_viol, rankings, truth, rows = [], [], [], [], [], []
    cpu_watch = cpu_act = 0.0
    infer_ms: list[float] = []
    for i, plan in enumerate(plans):
        watch = SeerDetector(model, act=False)
        r0 = run_episode(app, plan, backend, interval_s, detector=watch)
        r1 = run_episode(app, plan, backend, interval_s, detector=SeerDetector(
            model, act=True, boost_threshold=boost_threshold))
        infer_ms += watch.inference_ms
        al = np.array([bool(e.get("alerts")) for e in r0["timeline"]])
        v0 = np.array([violated(o) for o in observations(r0)])
        v1 = np.array([violated(o) for o in observations(r1)])
        n = min(len(al), len(v1))
        alerting.append(al[:n])
        viol.append(v0[:n])
        acted_viol.append(v1[:n])
        cpu_watch += r0["summary"]["mean_cpu"]
        cpu_act += r1["summary"]["mean_cpu"]
        f = plan.fault
        first = None
        if f is not None:
            fs = int(f.start_s / interval_s)
            for a in np.flatnonzero(al):
                if a >= max(fs, start) and v0[a:a + horizon + 1].any():
                    first = r0["timeline"][a]["alerts"][0]
                    rankings.append([tiers.index(t) for t in first["ranking"]])
                    truth.append(tiers.index(f.tier))
                    break
        rows.append({"fault": f.to_dict() if f else None, "rps": plan.rps, "seed": plan.seed,
                     "violated_s": float(v0[start:].sum() * interval_s),
                     "violated_s_with_seer": float(v1[start:].sum() * interval_s),
                     "alert_windows": int(al.sum()),
                     "first_alert": first, "mean_cpu": r0["summary"]["mean_cpu"],
                     "mean_cpu_with_seer": r1["summary"]["mean_cpu"]})
        if on_episode:
            on_episode(i + 1, len(plans))
    width = min(len(a) for a in alerting)
    al_m = alert_metrics(np.stack([a[:width] for a in alerting]),
                         np.stack([v[:width] for v in viol]), lead, horizon, start, interval_s)
    cul = topk(rankings, truth)
    without = sum(r["violated_s"] for r in rows)
    with_seer = sum(r["violated_s_with_seer"] for r in rows)
    return {
        "app": app.name, "backend": backend, "episodes": len(plans), "seed": seed,
        "interval_s": interval_s, "controller": "hpa (time constants x0.2, 2 pods at start)",
        "lead_s": lead * interval_s, "horizon_s": horizon * interval_s,
        "model_apps": model.meta.get("apps"), "threshold": model.threshold,
        "boost_threshold": model.threshold if boost_threshold is None else boost_threshold,
        "anticipation": al_m["anticipation"], "precision": al_m["precision"],
        "false_alerts_per_hour": al_m["false_alerts_per_hour"],
        "lead_time_s": al_m["lead_time_s"], "violations": al_m["violations"],
        "alerts": al_m["alerts"],
        "culprit_top1": cul["top1"], "culprit_top3": cul["top3"], "culprit_n": cul["n"],
        "violation_s_without": without, "violation_s_with": with_seer,
        "avoided": 1.0 - with_seer / without if without else None,
        "mean_cpu_without": cpu_watch / len(plans), "mean_cpu_with": cpu_act / len(plans),
        "inference_ms_per_window_median": float(np.median(infer_ms)) if infer_ms else None,
        "per_episode": rows,
    }
