"""The Seer section of ``leanstack demo``: a CPU hog creeps into one tier of the social network
(simulator); Seer, watching HPA's run, raises an alert naming the tier before QoS breaks, and
when allowed to act boosts it. Same seeds with and without Seer."""

from __future__ import annotations

import pathlib

from leanstack.microservices.app import load_app
from leanstack.seer.campaign import EpisodePlan, nominal_rps, observations, run_episode
from leanstack.seer.detector import SeerDetector
from leanstack.seer.faults import Fault
from leanstack.seer.features import violated

APP = "social-network"
FAULT = Fault("cpu_hog", "home-timeline", start_s=20.0, duration_s=25.0, severity=0.75,
              ramp_s=8.0)


def run_demo(out_dir: pathlib.Path) -> None:
    """Run the episode twice (Seer watching, Seer acting) and print what happened."""
    import torch

    from leanstack.seer.explain import attribution, plot
    from leanstack.seer.features import episode_features

    torch.set_num_threads(1)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    app = load_app(APP)
    plan = EpisodePlan(5, nominal_rps(app), "hpa", FAULT, 60.0)
    print(f"Seer: {APP} on the simulator under HPA at {plan.rps:g} req/s; injected: "
          f"{FAULT.kind} on {FAULT.tier} from {FAULT.start_s:g} s (ramping over "
          f"{FAULT.ramp_s:g} s), with the shipped model (src/leanstack/seer/models/default)")
    watch = SeerDetector(act=False)
    r0 = run_episode(app, plan, detector=watch, out_json=out_dir / "seer-demo-watch.json")
    r1 = run_episode(app, plan, detector=SeerDetector(act=True),
                     out_json=out_dir / "seer-demo-act.json")
    v0 = [violated(o) for o in observations(r0)]
    v1 = [violated(o) for o in observations(r1)]
    alerts = [e["alerts"][0] for e in r0["timeline"] if e.get("alerts")]
    first_v = next((i for i, v in enumerate(v0) if v and i >= 10), None)
    if alerts:
        a = alerts[0]
        lead = (f"{(first_v + 1) - a['t']:.0f} s before QoS broke" if first_v is not None
                else "QoS never broke")
        print(f"first alert at t={a['t']:g} s: P(violation) {a['p_violation']:.2f}, culprit "
              f"{a['culprit']} ({a['confidence']:.0%}) — {lead}")
    else:
        print("no alert was raised")
    print("| run | violation-seconds | mean CPU (cores) |")
    print("|---|---|---|")
    print(f"| HPA (Seer watching) | {sum(v0[10:])} | {r0['summary']['mean_cpu']:.2f} |")
    print(f"| HPA + Seer boosting the culprit | {sum(v1[10:])} | "
          f"{r1['summary']['mean_cpu']:.2f} |")
    if alerts:
        obs = observations(r0)
        tiers = list(app.services)
        x = episode_features(obs, tiers, 10)
        t = next(i for i, o in enumerate(obs) if o.t == alerts[0]["t"])
        lb = watch.model.lookback
        expl = attribution(watch.model, x[t - lb + 1:t + 1], tiers)
        plot(expl, out_dir / "seer-demo-explain.png")
        top = expl["tiers"][0]
        print(f"what drove the alert: {top['tier']} ({', '.join(top['top_signals'])}); plot: "
              f"{out_dir / 'seer-demo-explain.png'}")
    print(f"results: {out_dir / 'seer-demo-watch.json'}, {out_dir / 'seer-demo-act.json'}")
