"""Seer on the simulator: anticipation, precision, culprit accuracy vs baselines, violations
avoided, generalisation and cost.

1. Fault campaigns (``--episodes`` per app) on the social network, hotel reservation and media
   service, split by episode (run) into train / validation / test.
2. **Comparison** on the held-out test episodes of all three apps: Seer (CNN + LSTM), CNN-only,
   LSTM-only, the threshold rule, Sinan's boosted tree (violation only) and BARO (culprit only);
   every threshold picked on the validation episodes.
3. **Unseen app**: Seer trained on the social network + hotel reservation, tested on every
   media-service episode. This model is the one shipped (``--ship``).
4. **Unseen fault kind**: Seer trained without ``--left-out`` episodes, tested on the test
   episodes of that kind.
5. **Online, acting**: fresh campaigns (new seeds) under HPA on the social network and the media
   service, each episode run twice on the same seeds — Seer watching, Seer boosting the
   culprit — with the shipped model: anticipation, precision, culprit, violation-seconds
   avoided and the CPU the boosts cost.

    python benchmarks/seer_eval.py [--episodes 100] [--epochs 12] [--online-episodes 20]
                                   [--data-dir DIR] [--ship]

Writes benchmarks/results/seer_eval.json and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from leanstack.microservices.app import load_app
from leanstack.microservices.result import environment, write_json_atomic
from leanstack.seer.campaign import Dataset, collect
from leanstack.seer.evaluate import compare, evaluate_model, online_eval
from leanstack.seer.model import MODELS_DIR
from leanstack.seer.train import TrainConfig, split_episodes, train

RESULTS = Path(__file__).parent / "results"
APPS = ("social-network", "hotel-reservation", "media-service")
SEED = 11


def datasets(episodes: int, data_dir: Path | None) -> dict[str, Dataset]:
    out = {}
    for name in APPS:
        path = data_dir / f"{name}-{episodes}-{SEED}.npz" if data_dir else None
        if path is not None and path.is_file():
            out[name] = Dataset.load(path)
            continue
        t0 = time.monotonic()
        out[name] = collect(load_app(name), episodes, seed=SEED)
        print(f"collected {name}: {episodes} episodes in {time.monotonic() - t0:.0f} s")
        if path is not None:
            out[name].save(path)
    return out


def kind_of(ds: Dataset) -> list[str]:
    return [e["fault"]["kind"] if e["fault"] else "none" for e in ds.meta["episodes"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--online-episodes", type=int, default=20)
    ap.add_argument("--left-out", default="slow_downstream")
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="cache the campaigns here (reused when present)")
    ap.add_argument("--ship", action="store_true",
                    help="write the unseen-app model to src/leanstack/seer/models/default")
    ap.add_argument("--out", type=Path, default=RESULTS / "seer_eval.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t_start = time.monotonic()
    cfg = TrainConfig(epochs=args.epochs, seed=0)
    data = datasets(args.episodes, args.data_dir)
    splits = {n: split_episodes(len(ds), cfg.seed) for n, ds in data.items()}
    result: dict[str, Any] = {
        "settings": {"episodes_per_app": args.episodes, "campaign_seed": SEED,
                     "episode_s": data[APPS[0]].meta["episodes"][0]["duration_s"],
                     "interval_s": cfg_interval(data), "train_config": vars(cfg) | {},
                     "apps": list(APPS), "left_out_kind": args.left_out,
                     "online_episodes": args.online_episodes},
        "campaigns": {n: {"episodes": len(ds),
                          "with_fault": int((ds.arrays["culprit"] >= 0).sum()),
                          "violated": int(ds.arrays["violated"].any(axis=1).sum()),
                          "collection_wall_s": ds.meta.get("collection_wall_s")}
                      for n, ds in data.items()},
    }

    # 2. all methods, same held-out episodes
    def pick(part: str, names=APPS) -> list[tuple[Dataset, np.ndarray]]:
        return [(data[n], splits[n][part]) for n in names]

    res, models = compare(pick("train"), pick("val"), pick("test"), cfg, progress=False)
    result["comparison"] = res
    result["tradeoff_cnn_lstm_test"] = tradeoff(models["cnn_lstm"], pick("test"), cfg)
    print("comparison done", round(time.monotonic() - t_start))

    # 3. unseen app: train on two, test on the third (all its episodes)
    seen, unseen = APPS[:2], APPS[2]
    model, meta = train([data[n] for n in seen], cfg, progress=False,
                        train_episodes=[splits[n]["train"] for n in seen],
                        val_episodes=[splits[n]["val"] for n in seen])
    everything = np.arange(len(data[unseen]))
    result["unseen_app"] = {
        "trained_on": list(seen), "tested_on": unseen, "train_s": meta["train_s"],
        "seer": evaluate_model(model, [(data[unseen], everything)], cfg),
        "seer_on_seen_apps_test": evaluate_model(model, pick("test", seen), cfg),
    }
    base, _ = compare(pick("train", seen), pick("val", seen), [(data[unseen], everything)],
                      cfg, methods=("threshold", "baro"), progress=False)
    result["unseen_app"].update(base)
    model.meta = {**meta, "test_unseen_app": result["unseen_app"]["seer"]}
    if args.ship:
        model.save(MODELS_DIR / "default")
    print("unseen app done", round(time.monotonic() - t_start))

    # 4. unseen fault kind
    k = args.left_out
    tr = [splits[n]["train"][[kind_of(data[n])[i] != k for i in splits[n]["train"]]]
          for n in APPS]
    va = [splits[n]["val"][[kind_of(data[n])[i] != k for i in splits[n]["val"]]] for n in APPS]
    te = [(data[n], splits[n]["test"][[kind_of(data[n])[i] == k for i in splits[n]["test"]]])
          for n in APPS]
    m_k, meta_k = train([data[n] for n in APPS], cfg, progress=False, train_episodes=tr,
                        val_episodes=va)
    result["unseen_kind"] = {"left_out": k, "trained_kinds": meta_k["kinds"],
                             "seer": evaluate_model(m_k, te, cfg),
                             "seer_trained_with_it": evaluate_model(models["cnn_lstm"], te, cfg),
                             "test_episodes": int(sum(len(i) for _, i in te))}
    print("unseen kind done", round(time.monotonic() - t_start))

    # 5. online, acting, on fresh seeds with the unseen-app (shipped) model
    result["online"] = {}
    for name in (APPS[0], APPS[2]):
        r = online_eval(load_app(name), model, args.online_episodes, seed=1000)
        r["by_kind"] = by_kind(r["per_episode"])
        result["online"][name] = r
        print(f"online {name}: anticipation {r['anticipation']}, precision {r['precision']}, "
              f"culprit {r['culprit_top1']}, avoided {r['avoided']}")
    result["cost"] = {
        "train_s_cnn_lstm_three_apps": res["cnn_lstm"]["train_s"],
        "parameters": res["cnn_lstm"]["parameters"],
        "model_bytes": res["cnn_lstm"]["size_bytes"],
        "inference_ms_per_window_online_median":
            result["online"][APPS[0]]["inference_ms_per_window_median"],
        "batched_inference_ms_per_window": res["cnn_lstm"]["batched_inference_ms_per_window"],
    }
    result["environment"] = environment(time.monotonic() - t_start)
    if args.data_dir is not None:  # the cache's location is this machine's business
        result["environment"]["command"] = result["environment"]["command"].replace(
            str(args.data_dir), "DATA_DIR")
    write_json_atomic(result, args.out)
    print_tables(result)
    print(f"results: {args.out}")


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


def cfg_interval(data: dict[str, Dataset]) -> float:
    return float(next(iter(data.values())).meta["interval_s"])


def _p(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def print_tables(r: dict[str, Any]) -> None:
    print("\n| method | anticipation (>= 2 s) | precision | false alerts/h | median lead (s) "
          "| culprit top-1 | top-3 |")
    print("|---|---|---|---|---|---|---|")
    for name, m in r["comparison"].items():
        a = m.get("alerts", {})
        c = m.get("culprit", {})
        print(f"| {name} | {_p(a.get('anticipation'))} | {_p(a.get('precision'))} | "
              f"{a.get('false_alerts_per_hour', float('nan')):.1f} | {a.get('lead_time_s')} | "
              f"{_p(c.get('top1'))} | {_p(c.get('top3'))} |")
    print("\nSeer (CNN + LSTM) on the test episodes at fixed thresholds:")
    for row in r["tradeoff_cnn_lstm_test"]:
        print(f"  P >= {row['threshold']:.1f}: anticipation {_p(row['anticipation'])}, "
              f"precision {_p(row['precision'])}")
    for name, o in r["online"].items():
        print(f"\nonline {name}: anticipation {_p(o['anticipation'])}, precision "
              f"{_p(o['precision'])}, culprit top-1 {_p(o['culprit_top1'])}, avoided "
              f"{_p(o['avoided'])}, CPU {o['mean_cpu_without']:.2f} -> {o['mean_cpu_with']:.2f}")


if __name__ == "__main__":
    main()
