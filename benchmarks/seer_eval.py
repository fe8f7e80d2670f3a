"""Seer on the simulator: anticipation and its ceiling, precision, culprit accuracy vs baselines,
violations avoided, generalisation and cost.

1. Fault campaigns (``--episodes`` per app) on the social network, hotel reservation and media
   service under the static allocation, split by episode (run) into train / validation / test;
   campaigns with the HPA controller acting (``--hpa-episodes``, social network and hotel
   reservation) split the same way; a campaign of only the left-out fault kind
   (``--kind-episodes`` per app, new seeds) for the unseen-kind test.
2. ``comparison``: on the held-out test episodes of all three apps, Seer (CNN + LSTM),
   CNN-only, LSTM-only, the threshold rule, Sinan's boosted tree (violation only), BARO and
   RCAEval's N-Sigma (culprit only); every threshold picked on the validation episodes;
   anticipation also per fault ramp (under 4 s / at least 4 s). Also the *anticipation
   ceiling* (``leanstack.seer.ceiling``): which test violations showed any precursor at least
   the lead time ahead, and how many of those Seer anticipated. And the *edge-delay culprit
   test*: on the ``edge_delay`` test episodes plus a campaign of only that kind
   (``--edge-episodes`` per app, new seeds), which tier each culprit finder names first at the
   diagnosis windows -- the callee (the truth) or the caller (where the delay shows).
3. ``unseen_app``: Seer trained on the social network + hotel reservation (static campaigns),
   tested on every media-service episode.
4. ``unseen_kind``: Seer trained without ``--left-out`` episodes, tested on that kind's test
   episodes plus the whole left-out-kind campaign.
5. ``hpa``: Seer trained on the static *and* HPA campaigns of the two apps (the model shipped
   with ``--ship``), scored offline on the HPA test episodes next to the static-only model; then
   online on fresh campaigns (new seeds) under HPA on the social network and the media service,
   each episode run twice on the same seeds — Seer watching, Seer boosting the culprit — for
   both models: anticipation, precision, culprit, violation-seconds avoided, CPU of the boosts.
   The boost threshold (boost from a P(violation) below the alert threshold) is picked on a
   separate online validation campaign (seed ``ONLINE_VAL_SEED``) and then run on the test
   seeds next to the default. With ``--ship`` the model replaces the shipped one only when it
   is at least as good on the held-out HPA test episodes (anticipation and precision) as the
   shipped model, and better on one.

    python benchmarks/seer_eval.py [--episodes 100] [--hpa-episodes 50] [--kind-episodes 30]
        [--edge-episodes 30] [--online-episodes 20] [--online-val-episodes 10] [--epochs 12]
        [--variants cnn_lstm,cnn,lstm] [--no-static-model] [--data-dir DIR] [--ship]
        [--only SECTION[,SECTION]] [--merge PART.json ...]

``--only`` computes the named sections and keeps the others from the existing ``--out`` file
(each section records its own command); ``--merge`` copies the sections of partial results
written by ``--only ... --out PART.json`` runs (run side by side on a busy machine). Trained
networks are cached under ``--data-dir`` so sections can share them.

Writes benchmarks/results/seer_eval.json and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from leanstack.atomic import write_json
from leanstack.microservices.app import load_app
from leanstack.microservices.result import environment
from leanstack.provenance import package_versions
from leanstack.seer.campaign import Dataset, collect
from leanstack.seer.ceiling import anticipation_ceiling, healthy_range
from leanstack.seer.evaluate import (
    FAST_RAMP_S,
    compare,
    diagnosis_pairs,
    evaluate_model,
    online_eval,
)
from leanstack.seer.faults import FAST_SHARE, RAMP_S
from leanstack.seer.metrics import hysteresis, wilson
from leanstack.seer.model import MODELS_DIR, VARIANTS, SeerModel
from leanstack.seer.train import TrainConfig, score, split_episodes, start_window, steps, train

RESULTS = Path(__file__).parent / "results"
MODEL_PACKAGES = ("torch", "xgboost-cpu", "fse-baro", "RCAEval")
APPS = ("social-network", "hotel-reservation", "media-service")
SEEN = APPS[:2]
SEED, KIND_SEED, HPA_SEED, EDGE_SEED, ONLINE_SEED, ONLINE_VAL_SEED = 11, 21, 31, 41, 1000, 2000
BOOST_THRESHOLDS = (0.5, 0.3)
"""Boost thresholds tried on the online validation campaign next to the alert threshold."""
SECTIONS = ("comparison", "unseen_app", "unseen_kind", "hpa")
SECTION_KEYS = {
    "comparison": ("comparison", "tradeoff_cnn_lstm_test", "anticipation_ceiling", "cost",
                   "edge_delay_culprit"),
    "unseen_app": ("unseen_app",),
    "unseen_kind": ("unseen_kind",),
    "hpa": ("hpa_offline", "online", "online_static_trained", "hpa_campaigns",
            "online_inference_ms_per_window_median", "boost_threshold", "online_boost",
            "shipping"),
}
"""The result keys each section writes."""
Split = tuple[Dataset, np.ndarray]


def campaign(name: str, episodes: int, seed: int, data_dir: Path | None, tag: str = "",
             **kw: Any) -> Dataset:
    """A campaign of ``name``, read from the cache in ``data_dir`` when there."""
    path = data_dir / f"{name}{tag}-{episodes}-{seed}.npz" if data_dir else None
    if path is not None and path.is_file():
        return Dataset.load(path)
    t0 = time.monotonic()
    ds = collect(load_app(name), episodes, seed=seed, **kw)
    print(f"collected {name}{tag}: {episodes} episodes in {time.monotonic() - t0:.0f} s")
    if path is not None:
        ds.save(path)
    return ds


def cached_model(name: str, data_dir: Path | None, fit: Any) -> SeerModel:
    """The network ``name`` from the cache in ``data_dir``, else ``fit()``'s (then cached)."""
    d = data_dir / "models" / name if data_dir else None
    if d is not None and (d / "meta.json").is_file():
        return SeerModel.load(d)
    model, meta = fit()
    model.meta = meta
    if d is not None:
        model.save(d)
    return model


def kind_of(ds: Dataset) -> list[str]:
    return [e["fault"]["kind"] if e["fault"] else "none" for e in ds.meta["episodes"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--hpa-episodes", type=int, default=50)
    ap.add_argument("--kind-episodes", type=int, default=30)
    ap.add_argument("--edge-episodes", type=int, default=30,
                    help="episodes per app of the edge_delay-only campaign")
    ap.add_argument("--online-val-episodes", type=int, default=10,
                    help="online validation episodes per app for the boost threshold")
    ap.add_argument("--no-static-model", action="store_true",
                    help="hpa section: leave out the static-trained network (offline and "
                         "online; one training and half the online runs less)")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help="networks in the comparison (cnn_lstm always)")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--online-episodes", type=int, default=20)
    ap.add_argument("--online-apps", default=f"{APPS[0]},{APPS[2]}",
                    help="comma-separated apps of the online runs")
    ap.add_argument("--left-out", default="slow_downstream")
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="cache the campaigns and trained networks here (reused when present)")
    ap.add_argument("--ship", action="store_true",
                    help="write the HPA-trained model to src/leanstack/seer/models/default")
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help=f"comma-separated sections to compute, of {', '.join(SECTIONS)}")
    ap.add_argument("--merge", type=Path, nargs="*", default=[],
                    help="partial results whose sections to copy into --out")
    ap.add_argument("--out", type=Path, default=RESULTS / "seer_eval.json")
    args = ap.parse_args()
    only = [s for s in args.only.split(",") if s] if not args.merge else []
    if unknown := set(only) - set(SECTIONS):
        ap.error(f"unknown sections {sorted(unknown)} — use {', '.join(SECTIONS)}")
    torch.set_num_threads(1)
    t_start = time.monotonic()
    result: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for part in args.merge:
        r = json.loads(part.read_text())
        for sec, env in r["commands"].items():
            for k in SECTION_KEYS[sec]:  # online runs of several parts add up, app by app
                both = isinstance(r[k], dict) and isinstance(result.get(k), dict)
                result[k] = {**result[k], **r[k]} if both and k.startswith("online") else r[k]
            # where the partial results lay is this machine's business
            env["command"] = env["command"].replace(str(part.parent), "PARTS_DIR")
            cmds = result.setdefault("commands", {})
            if sec in cmds and sec == "hpa" and cmds[sec]["command"] != env["command"]:
                env = {**env, "command": f"{cmds[sec]['command']} && {env['command']}"}
            cmds[sec] = env
        result["settings"], result["campaigns"] = r["settings"], r["campaigns"]
    cfg = TrainConfig(epochs=args.epochs, seed=0)
    dd = args.data_dir
    data = {n: campaign(n, args.episodes, SEED, dd) for n in APPS}
    splits = {n: split_episodes(len(ds), cfg.seed) for n, ds in data.items()}

    def pick(part: str, names: tuple[str, ...] = APPS) -> list[Split]:
        return [(data[n], splits[n][part]) for n in names]

    def unseen_app_model() -> SeerModel:
        return cached_model("unseen_app", dd, lambda: train(
            [data[n] for n in SEEN], cfg, progress=False,
            train_episodes=[splits[n]["train"] for n in SEEN],
            val_episodes=[splits[n]["val"] for n in SEEN]))

    if only:
        result["settings"] = {
            "episodes_per_app": args.episodes, "campaign_seed": SEED,
            "episode_s": data[APPS[0]].meta["episodes"][0]["duration_s"],
            "interval_s": float(data[APPS[0]].meta["interval_s"]),
            "train_config": asdict(cfg), "apps": list(APPS), "left_out_kind": args.left_out,
            "kind_episodes_per_app": args.kind_episodes, "kind_seed": KIND_SEED,
            "hpa_episodes_per_app": args.hpa_episodes, "hpa_seed": HPA_SEED,
            "online_episodes": args.online_episodes, "online_seed": ONLINE_SEED,
            "edge_episodes_per_app": args.edge_episodes, "edge_seed": EDGE_SEED,
            "online_val_episodes": args.online_val_episodes, "online_val_seed": ONLINE_VAL_SEED,
            "fault_ramp_s": list(RAMP_S), "fast_ramp_share": FAST_SHARE,
            "fast_ramp_under_s": FAST_RAMP_S}
        result["campaigns"] = {n: {"episodes": len(ds),
                                   "with_fault": int((ds.arrays["culprit"] >= 0).sum()),
                                   "violated": int(ds.arrays["violated"].any(axis=1).sum()),
                                   "collection_wall_s": ds.meta.get("collection_wall_s")}
                               for n, ds in data.items()}
    for sec in only:
        t0 = time.monotonic()
        if sec == "comparison":
            result.update(comparison(args, pick, data, splits, cfg, dd))
        elif sec == "unseen_app":
            result["unseen_app"] = unseen_app(pick, data, unseen_app_model(), cfg)
        elif sec == "unseen_kind":
            result["unseen_kind"] = unseen_kind(args, pick, data, splits, cfg, dd)
        elif sec == "hpa":
            result.update(hpa(args, pick, data, splits, cfg,
                              None if args.no_static_model else unseen_app_model()))
        env = environment(time.monotonic() - t0)
        if dd is not None:  # the cache's location is this machine's business
            env["command"] = env["command"].replace(str(dd), "DATA_DIR")
        if args.out.parent.resolve() != RESULTS.resolve():
            env["command"] = env["command"].replace(str(args.out.parent), "PARTS_DIR")
        result.setdefault("commands", {})[sec] = {**env,
                                                  "packages_more": package_versions(MODEL_PACKAGES)}
        print(f"{sec} done in {time.monotonic() - t0:.0f} s")
    result["sections"] = [s for s in SECTIONS if s in result.get("commands", {})]
    if args.merge:
        cmd = environment(time.monotonic() - t_start)["command"]
        for part in args.merge:
            cmd = cmd.replace(str(part.parent), "PARTS_DIR")
        result["merge_command"] = cmd.replace(str(dd), "DATA_DIR") if dd else cmd
    write_json(args.out, result)
    print_tables(result)
    print(f"results: {args.out}")


def comparison(args: Any, pick: Any, data: dict[str, Dataset], splits: dict[str, Any],
               cfg: TrainConfig, dd: Path | None) -> dict[str, Any]:
    """Every method on the same held-out episodes, the trade-off curve, the ceiling and the
    edge-delay culprit test."""
    variants = ("cnn_lstm", *[v for v in args.variants.split(",") if v and v != "cnn_lstm"])
    if unknown := set(variants) - set(VARIANTS):
        raise SystemExit(f"unknown variants {sorted(unknown)} — use {', '.join(VARIANTS)}")
    res, models = compare(pick("train"), pick("val"), pick("test"), cfg, progress=False,
                          methods=(*variants, "threshold", "boosted_tree", "baro", "nsigma"))
    if dd is not None:
        models["cnn_lstm"].save(dd / "models" / "comparison_cnn_lstm")
    seer = models["cnn_lstm"]
    start = start_window(data[APPS[0]], cfg.lookback)
    tests = []
    for n in APPS:
        sub = data[n].subset(splits[n]["test"])
        alerting = hysteresis(score(seer, sub)[0], seer.threshold)
        tests.append((sub, healthy_range(data[n], splits[n]["train"], start), alerting))
    ds0 = data[APPS[0]]
    ceiling = anticipation_ceiling(tests, steps(ds0, cfg.lead_s), steps(ds0, cfg.horizon_s),
                                   start)
    return {"comparison": res, "tradeoff_cnn_lstm_test": tradeoff(seer, pick("test"), cfg),
            "anticipation_ceiling": ceiling,
            "edge_delay_culprit": edge_culprit(args, pick, data, splits, cfg, seer),
            "cost": {"train_s_cnn_lstm_three_apps": res["cnn_lstm"]["train_s"],
                     "parameters": res["cnn_lstm"]["parameters"],
                     "model_bytes": res["cnn_lstm"]["size_bytes"],
                     "batched_inference_ms_per_window":
                         res["cnn_lstm"]["batched_inference_ms_per_window"]}}


def edge_culprit(args: Any, pick: Any, data: dict[str, Dataset], splits: dict[str, Any],
                 cfg: TrainConfig, seer: SeerModel) -> dict[str, Any]:
    """Culprit finders on ``edge_delay`` faults (a slow caller -> callee link): the callee is
    the truth, its own latency stays normal and the caller waits. Per method: top-1 / top-3 of
    the callee, and how often the caller is named first instead."""
    from leanstack.seer.baselines import ThresholdRule, baro_ranking, nsigma_ranking
    from leanstack.seer.evaluate import fault_start_windows

    extra = {n: campaign(n, args.edge_episodes, EDGE_SEED, args.data_dir, tag="-edge",
                         kinds=("edge_delay",)) for n in APPS}
    tests = ([(data[n], splits[n]["test"][[kind_of(data[n])[i] == "edge_delay"
                                           for i in splits[n]["test"]]]) for n in APPS]
             + [(extra[n], np.arange(len(extra[n]))) for n in APPS])
    rankers = {
        "cnn_lstm": None,
        "threshold": lambda d, e, t: ThresholdRule.ranking(d.arrays["x"][e, t]),
        "baro": lambda d, e, t: baro_ranking(d.arrays["x"][e, :t + 1], d.tiers),
        "nsigma": lambda d, e, t: nsigma_ranking(d.arrays["x"][e, :t + 1], d.tiers,
                                                 int(fault_start_windows(d)[e])),
    }
    out: dict[str, Any] = {}
    for name, ranker in rankers.items():
        hits1 = hits3 = caller1 = n = 0
        for ds, idx in tests:
            sub = ds.subset(idx)
            c = score(seer, sub)[1] if ranker is None else None
            for e, t in diagnosis_pairs(sub, cfg):
                order = ([int(i) for i in np.argsort(-c[e, t], kind="stable")] if c is not None
                         else ranker(sub, e, t))
                f = sub.meta["episodes"][e]["fault"]
                callee, caller = sub.tiers.index(f["tier"]), sub.tiers.index(f["caller"])
                n += 1
                hits1 += order[0] == callee
                hits3 += callee in order[:3]
                caller1 += order[0] == caller
        out[name] = {"n": n, "top1": hits1 / n if n else None,
                     "top1_ci95": wilson(hits1, n), "top3": hits3 / n if n else None,
                     "caller_named_first": caller1 / n if n else None}
    out["episodes"] = int(sum(len(i) for _, i in tests))
    out["episodes_from_edge_campaign"] = int(sum(len(extra[n]) for n in APPS))
    out["violated_episodes"] = out["cnn_lstm"]["n"]
    return out


def unseen_app(pick: Any, data: dict[str, Dataset], model: SeerModel, cfg: TrainConfig
               ) -> dict[str, Any]:
    """Trained on two apps, tested on every episode of the third."""
    unseen = APPS[2]
    everything = [(data[unseen], np.arange(len(data[unseen])))]
    out = {"trained_on": list(SEEN), "tested_on": unseen, "train_s": model.meta["train_s"],
           "seer": evaluate_model(model, everything, cfg),
           "seer_on_seen_apps_test": evaluate_model(model, pick("test", SEEN), cfg)}
    base, _ = compare(pick("train", SEEN), pick("val", SEEN), everything, cfg,
                      methods=("threshold", "baro", "nsigma"), progress=False)
    return {**out, **base}


def unseen_kind(args: Any, pick: Any, data: dict[str, Dataset], splits: dict[str, Any],
                cfg: TrainConfig, dd: Path | None) -> dict[str, Any]:
    """Trained without one fault kind, tested on that kind's test episodes and on a campaign
    of only that kind."""
    k = args.left_out

    def keep(n: str, part: str, want: bool) -> np.ndarray:
        kinds = kind_of(data[n])
        return splits[n][part][[(kinds[i] == k) == want for i in splits[n][part]]]

    m_k = cached_model(f"without_{k}", dd, lambda: train(
        [data[n] for n in APPS], cfg, progress=False,
        train_episodes=[keep(n, "train", False) for n in APPS],
        val_episodes=[keep(n, "val", False) for n in APPS]))
    m_all = cached_model("comparison_cnn_lstm", dd, lambda: train(
        [data[n] for n in APPS], cfg, progress=False,
        train_episodes=[splits[n]["train"] for n in APPS],
        val_episodes=[splits[n]["val"] for n in APPS]))
    extra = {n: campaign(n, args.kind_episodes, KIND_SEED, dd, tag=f"-{k}", kinds=(k,))
             for n in APPS}
    tests = ([(data[n], keep(n, "test", True)) for n in APPS]
             + [(extra[n], np.array([i for i, kk in enumerate(kind_of(extra[n])) if kk == k]))
                for n in APPS])
    return {"left_out": k, "trained_kinds": m_k.meta["kinds"],
            "seer": evaluate_model(m_k, tests, cfg),
            "seer_trained_with_it": evaluate_model(m_all, tests, cfg),
            "test_episodes": int(sum(len(i) for _, i in tests)),
            "test_episodes_from_kind_campaign": int(sum(len(i) for _, i in tests[len(APPS):])),
            "kind_campaign_collection_wall_s": {n: extra[n].meta.get("collection_wall_s")
                                                for n in APPS}}


def hpa(args: Any, pick: Any, data: dict[str, Dataset], splits: dict[str, Any],
        cfg: TrainConfig, static_model: SeerModel | None) -> dict[str, Any]:
    """Trained with HPA campaigns too: offline on the HPA test episodes, then online acting."""
    dd = args.data_dir
    hdata = {n: campaign(n, args.hpa_episodes, HPA_SEED, dd, tag="-hpa", controller="hpa")
             for n in SEEN}
    hsplits = {n: split_episodes(len(ds), cfg.seed) for n, ds in hdata.items()}
    trains = pick("train", SEEN) + [(hdata[n], hsplits[n]["train"]) for n in SEEN]
    vals = pick("val", SEEN) + [(hdata[n], hsplits[n]["val"]) for n in SEEN]
    model = cached_model("hpa_trained", dd, lambda: train(
        [d for d, _ in trains], cfg, progress=False, train_episodes=[i for _, i in trains],
        val_episodes=[i for _, i in vals]))
    htest = [(hdata[n], hsplits[n]["test"]) for n in SEEN]
    unseen = [(data[APPS[2]], np.arange(len(data[APPS[2]])))]
    shipped = SeerModel.load(MODELS_DIR / "default")
    offline = {"static_trained": ({"hpa_test": evaluate_model(static_model, htest, cfg)}
                                  if static_model is not None else None),
               "hpa_trained": {"hpa_test": evaluate_model(model, htest, cfg),
                               "unseen_app_static": evaluate_model(model, unseen, cfg),
                               "train_s": model.meta["train_s"]},
               "shipped_before": {"hpa_test": evaluate_model(shipped, htest, cfg),
                                  "unseen_app_static": evaluate_model(shipped, unseen, cfg),
                                  "apps": shipped.meta.get("apps"),
                                  "kinds": shipped.meta.get("kinds")}}
    shipping = ship_decision(offline["hpa_trained"]["hpa_test"]["alerts"],
                             offline["shipped_before"]["hpa_test"]["alerts"])
    shipping["requested"] = bool(args.ship)
    if args.ship and shipping["better"]:
        model.save(MODELS_DIR / "default")
        shipping["shipped"] = True
    print(f"shipping: {shipping}")
    online: dict[str, Any] = {}
    online_static: dict[str, Any] = {}
    for name in [a for a in args.online_apps.split(",") if a]:
        pairs = [(model, online), (static_model, online_static)]
        for m, sink in pairs[:1] if static_model is None else pairs:
            r = online_eval(load_app(name), m, args.online_episodes, seed=ONLINE_SEED)
            r["by_kind"] = by_kind(r["per_episode"])
            sink[name] = r
            print(f"online {name} ({m.meta['apps']}, {len(m.meta['loss'])} epochs): "
                  f"anticipation {r['anticipation']}, precision {r['precision']}, "
                  f"culprit {r['culprit_top1']}, avoided {r['avoided']}")
    boost = pick_boost_threshold(args, model)
    online_boost: dict[str, Any] = {}
    if boost["chosen"] != model.threshold:
        for name in [a for a in args.online_apps.split(",") if a]:
            r = online_eval(load_app(name), model, args.online_episodes, seed=ONLINE_SEED,
                            boost_threshold=boost["chosen"])
            r["by_kind"] = by_kind(r["per_episode"])
            online_boost[name] = r
            print(f"online {name}, boost at P >= {boost['chosen']}: avoided {r['avoided']}, "
                  f"CPU {r['mean_cpu_without']:.2f} -> {r['mean_cpu_with']:.2f}")
    return {"hpa_offline": offline, "online": online, "online_static_trained": online_static,
            "boost_threshold": boost, "online_boost": online_boost, "shipping": shipping,
            "hpa_campaigns": {n: {"episodes": len(ds),
                                  "with_fault": int((ds.arrays["culprit"] >= 0).sum()),
                                  "violated": int(ds.arrays["violated"].any(axis=1).sum()),
                                  "collection_wall_s": ds.meta.get("collection_wall_s")}
                              for n, ds in hdata.items()},
            "online_inference_ms_per_window_median":
                float(np.median([o["inference_ms_per_window_median"] for o in online.values()]))}


def ship_decision(new: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    """The new model is better when neither its held-out anticipation nor its precision is
    below the shipped model's and one of them is above."""
    keys = ("anticipation", "precision")
    vals = {k: (new.get(k) or 0.0, old.get(k) or 0.0) for k in keys}
    better = (all(a >= b for a, b in vals.values())
              and any(a > b for a, b in vals.values()))
    return {"rule": "held-out HPA test episodes: anticipation and precision both >= the "
                    "shipped model's, one of them >",
            "new": {k: v[0] for k, v in vals.items()},
            "current": {k: v[1] for k, v in vals.items()},
            "better": better, "shipped": False}


def pick_boost_threshold(args: Any, model: SeerModel) -> dict[str, Any]:
    """The boost threshold with the most violation-seconds avoided on an online validation
    campaign (seed ``ONLINE_VAL_SEED``, never the test seeds); ties go to the higher one."""
    cands = sorted({model.threshold, *[t for t in BOOST_THRESHOLDS
                                                  if t < model.threshold]}, reverse=True)
    rows = []
    for thr in cands:
        without = with_seer = cpu0 = cpu1 = 0.0
        for name in [a for a in args.online_apps.split(",") if a]:
            r = online_eval(load_app(name), model, args.online_val_episodes,
                            seed=ONLINE_VAL_SEED, boost_threshold=thr)
            without += r["violation_s_without"]
            with_seer += r["violation_s_with"]
            cpu0 += r["mean_cpu_without"]
            cpu1 += r["mean_cpu_with"]
        rows.append({"boost_threshold": thr, "violation_s_without": without,
                     "violation_s_with": with_seer,
                     "avoided": 1.0 - with_seer / without if without else None,
                     "cpu_added_share": cpu1 / cpu0 - 1.0 if cpu0 else None})
        print(f"validation boost at P >= {thr}: {rows[-1]}")
    best = max(rows, key=lambda r: (r["avoided"] or 0.0, r["boost_threshold"]))
    return {"alert_threshold": model.threshold, "validation": rows,
            "chosen": best["boost_threshold"]}


def tradeoff(model: Any, tests: list[tuple[Dataset, np.ndarray]], cfg: TrainConfig
             ) -> list[dict[str, Any]]:
    """Anticipation and precision on the test episodes at fixed thresholds (a curve to read,
    not a choice: the reported operating point is the validation-picked threshold)."""
    from leanstack.seer.evaluate import alert_eval
    from leanstack.seer.metrics import merge
    from leanstack.seer.train import score

    scored = [(ds.subset(i), score(model, ds.subset(i))[0]) for ds, i in tests]
    out = []
    for thr in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
        m = merge([alert_eval(p, sub, thr, cfg) for sub, p in scored])
        out.append({"threshold": thr, "anticipation": m["anticipation"],
                    "precision": m["precision"],
                    "false_alerts_per_hour": m["false_alerts_per_hour"]})
    return out


def by_kind(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Violation-seconds with and without Seer acting, and CPU, per fault kind."""
    out: dict[str, Any] = {}
    for r in rows:
        k = r["fault"]["kind"] if r["fault"] else "none"
        d = out.setdefault(k, {"episodes": 0, "violation_s_without": 0.0,
                               "violation_s_with": 0.0, "culprit_named_first": 0,
                               "alerted": 0})
        d["episodes"] += 1
        d["violation_s_without"] += r["violated_s"]
        d["violation_s_with"] += r["violated_s_with_seer"]
        if r["first_alert"] is not None:
            d["alerted"] += 1
            d["culprit_named_first"] += r["first_alert"]["culprit"] == r["fault"]["tier"]
    for d in out.values():
        w = d["violation_s_without"]
        d["avoided"] = 1.0 - d["violation_s_with"] / w if w else None
    return out


def _p(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def print_tables(r: dict[str, Any]) -> None:
    if "comparison" in r:
        print("\n| method | anticipation (>= 2 s) | precision | false alerts/h | median lead (s) "
              "| culprit top-1 | top-3 | top-1 with decoy |")
        print("|---|---|---|---|---|---|---|---|")
        for name, m in r["comparison"].items():
            a = m.get("alerts", {})
            c, d = m.get("culprit", {}), m.get("culprit_decoy", {})
            fa = a.get("false_alerts_per_hour")
            print(f"| {name} | {_p(a.get('anticipation'))} | {_p(a.get('precision'))} | "
                  f"{'n/a' if fa is None else f'{fa:.1f}'} | {a.get('lead_time_s', 'n/a')} | "
                  f"{_p(c.get('top1'))} | {_p(c.get('top3'))} | {_p(d.get('top1'))} |")
        print("\n| method | anticipation, ramp < 4 s | ramp >= 4 s | no fault (events) |")
        print("|---|---|---|---|")
        for name, m in r["comparison"].items():
            g = m.get("alerts_by_ramp")
            if g:
                cells = [f"{_p(g[k]['anticipation'])} of {g[k]['violations']}" if k in g
                         else "n/a" for k in ("ramp_under_4s", "ramp_4s_or_more", "no_fault")]
                print(f"| {name} | {' | '.join(cells)} |")
        if "edge_delay_culprit" in r:
            e = r["edge_delay_culprit"]
            print(f"\nedge_delay culprit ({e['violated_episodes']} diagnosis windows):")
            print("| method | callee top-1 | top-3 | caller named first |")
            print("|---|---|---|---|")
            for name in ("cnn_lstm", "threshold", "baro", "nsigma"):
                m = e[name]
                print(f"| {name} | {_p(m['top1'])} | {_p(m['top3'])} | "
                      f"{_p(m['caller_named_first'])} |")
        c = r["anticipation_ceiling"]
        print(f"\nceiling: {c['precursor']} of {c['events']} test violations showed a precursor "
              f">= 2 s ahead ({_p(c['ceiling'])}); Seer anticipated "
              f"{c['anticipated_precursor']} of those")
    if "boost_threshold" in r:
        print(f"\nboost threshold chosen on validation: {r['boost_threshold']['chosen']}")
        for name, o in r.get("online_boost", {}).items():
            print(f"online {name} boosting at that: avoided {_p(o['avoided'])}, CPU "
                  f"{o['mean_cpu_without']:.2f} -> {o['mean_cpu_with']:.2f}")
    for name, o in r.get("online", {}).items():
        before = r.get("online_static_trained", {}).get(name, {})
        print(f"\nonline {name}: anticipation {_p(o['anticipation'])}, precision "
              f"{_p(o['precision'])}, culprit top-1 {_p(o['culprit_top1'])}, avoided "
              f"{_p(o['avoided'])} (static-trained model: {_p(before.get('avoided'))}), "
              f"CPU {o['mean_cpu_without']:.2f} -> {o['mean_cpu_with']:.2f}")


if __name__ == "__main__":
    main()
