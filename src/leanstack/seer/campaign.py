"""Fault-injection campaigns: many short episodes, each with a random fault (or none), turned
into a labelled dataset.

An episode is one run of an app on a backend under Poisson load with a controller (the static
allocation for training campaigns) and at most one :class:`Fault`. Each window records the
features (:mod:`features`), whether QoS was violated, and whether the fault was in force.
:class:`Dataset` holds a campaign of one app as arrays plus its schema and the episode ground
truth, written as one ``.npz`` file.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from leanstack.atomic import write_json, write_npz
from leanstack.errors import LeanstackError
from leanstack.microservices.app import AppSpec
from leanstack.microservices.controllers import HPAController, StaticController
from leanstack.microservices.load import LoadSpec
from leanstack.microservices.observation import Allocation, Observation
from leanstack.seer.faults import (
    DECOY_LOAD,
    DECOY_SEVERITY,
    FAST_SHARE,
    FAULT_KINDS,
    RAMP_S,
    Fault,
    FaultInjector,
    draw_fault,
    kinds_for,
)
from leanstack.seer.features import CHANNELS, episode_features, violated

EPISODE_S = 90.0
WARMUP = 10
TARGET_UTIL = 0.45
"""The busiest tier's CPU utilisation at an episode's nominal load."""

SCHEMA = {
    "x": "float32 [episode, window, tier, channel]: features (channels in meta.channels)",
    "violated": "bool [episode, window]: some request class violated its SLA in the window",
    "fault_active": "bool [episode, window]: the episode's fault was in force in the window",
    "culprit": "int [episode]: index into meta.tiers of the faulty tier, -1 without a fault",
    "label_violation": "bool [episode, window]: a violation within meta.horizon_s after it",
    "label_culprit": "int [episode, window]: culprit index while the fault is in force, else -1",
}


def nominal_rps(app: AppSpec, seed: int = 0) -> float:
    """Load at which the app's busiest tier uses ``TARGET_UTIL`` of its CPU."""
    util = utilisation_per_rps(app, seed)
    return round(TARGET_UTIL / max(max(util.values()), 1e-9), 1)


def utilisation_per_rps(app: AppSpec, seed: int = 0) -> dict[str, float]:
    """Per tier: CPU used over the CPU it may use, per request/s of load (a 10 s simulator probe
    at 100 req/s under the static allocation; a single-threaded replica uses at most one
    core)."""
    from leanstack.microservices.sim import SimBackend

    be = SimBackend(1.0, seed=seed)
    be.deploy(app, Allocation.static_max(app))
    be.start(LoadSpec("poisson", 100.0, 10.0, seed=seed))
    obs = [be.observe() for _ in range(10)][2:]
    be.close()
    util = {}
    for name, svc in app.services.items():
        cap = min(svc.max_cpu, svc.replicas) if not svc.is_storage else min(svc.max_cpu, 1.0)
        util[name] = float(np.mean([o.tiers[name].cpu_used for o in obs])) / cap / 100.0
    return util


@dataclass
class EpisodePlan:
    """What one episode runs: seed, load, controller, its fault (``None``: no fault; its tier
    is the culprit) and an optional milder ``decoy`` anomaly on another tier."""

    seed: int
    rps: float
    controller: str
    fault: Fault | None
    duration_s: float = EPISODE_S
    decoy: Fault | None = None
    pattern: str = "poisson"

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "rps": self.rps, "controller": self.controller,
                "duration_s": self.duration_s, "pattern": self.pattern,
                "fault": self.fault.to_dict() if self.fault else None,
                "decoy": self.decoy.to_dict() if self.decoy else None}

    def load(self) -> LoadSpec:
        """The episode's arrivals: Poisson, or a gentle diurnal swing or step around ``rps``."""
        amplitude = {"diurnal": 0.3, "step": 0.2}.get(self.pattern, 0.5)
        return LoadSpec(self.pattern, self.rps, self.duration_s, seed=self.seed,
                        amplitude=amplitude)


def plan_campaign(app: AppSpec, episodes: int, seed: int = 0,
                  kinds: tuple[str, ...] = FAULT_KINDS, no_fault_share: float = 0.2,
                  duration_s: float = EPISODE_S, rps: float | None = None,
                  decoy_share: float = 0.4, controller: str = "static",
                  ramp_s: tuple[float, float] = RAMP_S, fast_share: float = FAST_SHARE
                  ) -> list[EpisodePlan]:
    """Random episodes under ``controller`` (``static`` or ``hpa``, see
    :func:`make_controller`): load 80-120% of nominal (``rps``, by default
    :func:`nominal_rps`; Poisson, or a diurnal swing or step in 20% each), a random fault in
    all but ``no_fault_share`` of them, and a decoy in ``decoy_share`` of them. Each fault's
    ramp is drawn from ``ramp_s`` seconds, or in ``fast_share`` of them from 1-4 s."""
    if controller not in ("static", "hpa"):
        raise LeanstackError(f"campaign controller must be static or hpa, got '{controller}'")
    if episodes < 1:
        raise LeanstackError(f"--episodes must be at least 1, got {episodes}")
    if duration_s < 40:
        raise LeanstackError(f"episodes need at least 40 s (warm-up + fault), got {duration_s}")
    if not (0 < ramp_s[0] <= ramp_s[1] and 0 <= fast_share <= 1):
        raise LeanstackError(f"fault ramps need 0 < low <= high seconds and a fast share in "
                             f"[0, 1], got ramp {ramp_s}, fast share {fast_share}")
    ramps = {"ramp_s": ramp_s, "fast_share": fast_share}
    per_rps = utilisation_per_rps(app, seed)
    base = rps or round(TARGET_UTIL / max(max(per_rps.values()), 1e-9), 1)
    rng = np.random.default_rng([seed, 7])
    plans = []
    for i in range(episodes):
        load = round(base * rng.uniform(0.8, 1.2), 1)
        util = {t: u * load for t, u in per_rps.items()}
        fault = (None if rng.random() < no_fault_share
                 else draw_fault(app, rng, duration_s, kinds, utilisation=util, **ramps))
        decoy = None
        if rng.random() < decoy_share:
            decoy = draw_fault(app, rng, duration_s, kinds, utilisation=util,
                               target_load=DECOY_LOAD, severity=DECOY_SEVERITY,
                               exclude=fault.tier if fault else None, **ramps)
        pattern = str(rng.choice(["poisson", "poisson", "poisson", "diurnal", "step"]))
        plans.append(EpisodePlan(seed * 100_000 + i, load, controller, fault, duration_s,
                                 decoy, pattern))
    return plans


def make_controller(name: str) -> Any:
    """The campaign's controllers: ``static``, or HPA with time constants x0.2 (3 s syncs)
    starting every logic tier at 2 pods (1 pod cannot carry the nominal load)."""
    if name == "hpa":
        return HPAController(time_scale=0.2, initial_replicas=2)
    return StaticController()


def run_episode(app: AppSpec, plan: EpisodePlan, backend: str = "sim", interval_s: float = 1.0,
                detector: Any = None, controller: Any = None,
                out_json: str | Path | None = None) -> dict[str, Any]:
    """Run one episode through the experiment runner; return its ExperimentResult with the
    fault's ground truth under ``"faults"`` (also written to ``out_json`` when given)."""
    from leanstack.microservices.runner import make_backend, run_experiment

    opts = {"seed": plan.seed} if backend == "sim" else {}
    inner = make_backend(backend, interval_s, **opts)
    be = FaultInjector(inner, [f for f in (plan.fault, plan.decoy) if f])
    ctrl = controller or make_controller(plan.controller)
    load = plan.load()
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(out_json) if out_json else Path(tmp) / "episode.json"
        result = run_experiment(app, be, ctrl, load, target, progress=False, detector=detector)
        result["faults"] = [plan.fault.to_dict()] if plan.fault else []
        result["decoys"] = [plan.decoy.to_dict()] if plan.decoy else []
        result["episode"] = plan.to_dict()
        if out_json:
            write_json(out_json, result)
    return result


def observations(result: dict[str, Any]) -> list[Observation]:
    """The observations of a result's timeline."""
    keys = ("t", "interval_s", "offered_rps", "classes", "tiers")
    return [Observation.from_dict({k: e[k] for k in keys if k in e}) for e in result["timeline"]]


@dataclass
class Dataset:
    """A campaign of one app: arrays (see :data:`SCHEMA`) and ``meta`` (app, tiers, channels,
    interval, horizon, episodes with their ground truth)."""

    arrays: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def tiers(self) -> list[str]:
        return list(self.meta["tiers"])

    def __len__(self) -> int:
        return int(self.arrays["x"].shape[0])

    def subset(self, episodes: np.ndarray | list[int]) -> Dataset:
        idx = np.asarray(episodes, dtype=int)
        meta = {**self.meta, "episodes": [self.meta["episodes"][i] for i in idx]}
        return Dataset({k: v[idx] for k, v in self.arrays.items()}, meta)

    def save(self, path: str | Path) -> Path:
        """Write the dataset as one compressed .npz, atomically."""
        return write_npz(path, self.arrays, self.meta)

    @classmethod
    def load(cls, path: str | Path) -> Dataset:
        path = Path(path)
        how = "write one with 'leanstack seer collect --app APP --out FILE.npz'"
        if not path.is_file():
            raise LeanstackError(f"{path}: no such dataset — {how}")
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                arrays = {k: z[k] for k in SCHEMA}
        except (OSError, KeyError, ValueError) as e:
            raise LeanstackError(f"{path}: not a Seer dataset ({e}) — {how}") from None
        return cls(arrays, meta)


def labels(violated_w: np.ndarray, horizon: int) -> np.ndarray:
    """``[..., window]`` bool: a violation in one of the next ``horizon`` windows."""
    out = np.zeros_like(violated_w, dtype=bool)
    for h in range(1, horizon + 1):
        out[..., :-h] |= violated_w[..., h:]
    return out


def build_dataset(app: AppSpec, plans: list[EpisodePlan], results: list[dict[str, Any]],
                  horizon_s: float, interval_s: float, extra: dict[str, Any] | None = None
                  ) -> Dataset:
    """Turn finished episodes into a :class:`Dataset`."""
    tiers = list(app.services)
    xs, viol, active, culprit = [], [], [], []
    n = min(len(r["timeline"]) for r in results)
    for plan, res in zip(plans, results, strict=True):
        obs = observations(res)[:n]
        xs.append(episode_features(obs, tiers, WARMUP))
        viol.append([violated(o) for o in obs])
        f = plan.fault
        active.append([bool(f and f.strength(o.t - interval_s + 1e-6) > 0) for o in obs])
        culprit.append(tiers.index(f.tier) if f else -1)
    v = np.array(viol, dtype=bool)
    act = np.array(active, dtype=bool)
    cul = np.array(culprit, dtype=np.int64)
    horizon = max(1, round(horizon_s / interval_s))
    arrays = {"x": np.stack(xs), "violated": v, "fault_active": act, "culprit": cul,
              "label_violation": labels(v, horizon),
              "label_culprit": np.where(act, cul[:, None], -1)}
    meta = {"app": app.name, "tiers": tiers, "channels": list(CHANNELS),
            "interval_s": interval_s, "horizon_s": horizon_s, "warmup_windows": WARMUP,
            "schema": SCHEMA, "episodes": [p.to_dict() for p in plans], **(extra or {})}
    return Dataset(arrays, meta)


def collect(app: AppSpec, episodes: int, seed: int = 0, backend: str = "sim",
            interval_s: float = 1.0, horizon_s: float = 5.0,
            kinds: tuple[str, ...] = FAULT_KINDS, duration_s: float = EPISODE_S,
            rps: float | None = None, controller: str = "static",
            on_episode: Callable[[int, int], None] | None = None,
            ramp_s: tuple[float, float] = RAMP_S, fast_share: float = FAST_SHARE) -> Dataset:
    """Plan and run a campaign under ``controller`` (``static`` or ``hpa``) with fault ramps
    drawn as :func:`plan_campaign` does; return its dataset."""
    kinds = kinds_for(backend, kinds)
    plans = plan_campaign(app, episodes, seed, kinds, duration_s=duration_s, rps=rps,
                          controller=controller, ramp_s=ramp_s, fast_share=fast_share)
    t0 = time.monotonic()
    results = []
    for i, plan in enumerate(plans):
        results.append(run_episode(app, plan, backend, interval_s))
        if on_episode:
            on_episode(i + 1, len(plans))
    extra = {"backend": backend, "seed": seed, "kinds": list(kinds), "controller": controller,
             "ramp_s": list(ramp_s), "fast_ramp_share": fast_share,
             "collection_wall_s": round(time.monotonic() - t0, 2)}
    return build_dataset(app, plans, results, horizon_s, interval_s, extra)
