"""Sinan's online controller: each second, predict all candidates and pick the cheapest safe one.

The paper's loop (from its public code): the first 5 s at max; candidate allocations built from
the per-tier actions (hold, all at max, each tier up, all up, recently reduced "victim" tiers up,
all down, each tier down, the k least-utilised tiers down), a tier whose 3 s utilisation is above
0.75 never going below ``cpu * util / 0.75``. We apply that floor to every tier and every
candidate, hold included: no tier is cut below its 3 s CPU use / 0.75, and a saturated tier is
lifted even when nothing else changes. (Our tiers have at most one core, so the paper's -1 core
action jumps straight to the floor; with minutes rather than hours of training data the model
alone did not guard such cuts well enough.) All candidates go through the CNN and the booster
in one batch. Decision: the cheapest scale-down whose predicted p99 is below QoS minus the margin
and whose violation probability is at most 0.10 (only when the load is not rising by more than
2%); else hold if it passes the p99 test with probability below 0.25; else the cheapest
scale-up passing that test; else everything to max.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from leanstack.errors import LeanstackError
from leanstack.microservices.app import AppSpec
from leanstack.microservices.observation import Allocation, Observation
from leanstack.sinan.actions import CpuGrid, with_cpus
from leanstack.sinan.features import (
    P99,
    WINDOW,
    SinanConstants,
    proposal_vector,
    state_arrays,
)
from leanstack.sinan.model import SinanModel, shipped_model_dir

UTIL_WINDOW = 3
UTIL_HIGH = 0.75
DOWN_PROB = 0.10
HOLD_PROB = 0.25
RPS_RISE = 0.02
VICTIM_S = 5
LEAST_UTILISED_K = (2, 4, 8)


class SinanController:
    """The Sinan control loop; ``model`` is a model directory (default: the shipped one)."""

    name = "sinan"

    def __init__(self, model: str | Path | None = None) -> None:
        self.model_path = None if model is None else Path(str(model))
        self.grid = CpuGrid()
        self.consts = SinanConstants()
        self._model: SinanModel | None = None
        self._app: AppSpec | None = None
        self._reduced_at: dict[str, int] = {}
        self._last_candidates = 0
        self._choices: dict[str, int] = {}

    def reset(self, app: AppSpec, interval_s: float) -> Allocation:
        """Load the model for ``app`` (one-line error when missing or for another app)."""
        path = self.model_path or shipped_model_dir(app.name)
        how = (f"train one: leanstack sinan collect --app {app.name} --out data.npz && "
               "leanstack sinan train --data data.npz --out DIR, then --opt model=DIR")
        if not (path / "meta.json").is_file():
            raise LeanstackError(f"no Sinan model for app '{app.name}' in '{path}' — {how}")
        model = SinanModel.load(path)
        if model.meta.get("app") != app.name:
            raise LeanstackError(f"Sinan model in '{path}' was trained for app "
                                 f"'{model.meta.get('app')}', not '{app.name}' — {how}")
        if model.tiers != app.tiers:
            raise LeanstackError(f"Sinan model in '{path}' was trained on other tiers than "
                                 f"app '{app.name}' has now — {how}")
        self._model, self._app = model, app
        self._reduced_at = {}
        self._choices = {}
        return Allocation.static_max(app)

    def decide(self, history: list[Observation], current: Allocation) -> Allocation:
        """One control step (max for the first 5 s)."""
        assert self._model is not None and self._app is not None, "reset() first"
        step = len(history)
        if step < WINDOW:
            return Allocation.static_max(self._app)
        kinds, cands = self._candidates(history, current)
        tiers = self._model.tiers
        sys_x, lat_x = state_arrays(history, len(history) - 1, tiers)
        n = len(cands)
        props = np.stack([proposal_vector(c, tiers) for c in cands])
        pred, prob = self._model.predict(np.broadcast_to(sys_x, (n, *sys_x.shape)),
                                         np.broadcast_to(lat_x, (n, *lat_x.shape)), props)
        self._last_candidates = n
        ok_p99 = pred[:, P99] < 1.0 - self.consts.margin
        cost = props.sum(axis=1)
        kind = np.array(kinds)

        def cheapest(mask: np.ndarray) -> int | None:
            idx = np.flatnonzero(mask)
            return None if idx.size == 0 else int(idx[np.argmin(cost[idx])])

        choice = None
        if not self._load_rising(history):
            choice = cheapest((kind == "down") & ok_p99 & (prob <= DOWN_PROB))
        if choice is None and ok_p99[0] and prob[0] < HOLD_PROB:
            choice = 0  # hold
        if choice is None:
            choice = cheapest((kind == "up") & ok_p99 & (prob < HOLD_PROB))
        if choice is None:
            choice = 1  # everything at max
        picked = cands[choice]
        self._choices[kinds[choice]] = self._choices.get(kinds[choice], 0) + 1
        for name, ta in picked.tiers.items():
            if ta.cpu < current.tiers[name].cpu:
                self._reduced_at[name] = step
        return picked

    def describe(self) -> dict[str, Any]:
        """Model, thresholds and how often each kind of decision was taken."""
        meta = self._model.meta if self._model else {}
        return {"name": self.name,
                "model": str(self.model_path) if self.model_path else "shipped",
                "model_metrics": meta.get("metrics"), "qos_ms": meta.get("qos_ms"),
                "margin_qos": self.consts.margin, "down_prob": DOWN_PROB,
                "hold_prob": HOLD_PROB, "rps_rise": RPS_RISE,
                "floor_cpu": self.grid.floor, "step_cpu": self.grid.step,
                "candidates_last_step": self._last_candidates, "choices": self._choices}

    # --- candidates ------------------------------------------------------------------------

    def _candidates(self, history: list[Observation],
                    current: Allocation) -> tuple[list[str], list[Allocation]]:
        """Candidate allocations with their kind (``hold``, ``max``, ``up``, ``down``)."""
        app, grid = self._app, self.grid
        assert app is not None
        util = self._utilisation(history, current)
        floors = {n: max(grid.tier_floor(app, n),
                         _ceil_step(current.tiers[n].cpu * util[n] / UTIL_HIGH, grid.step))
                  for n in current.tiers}

        # every candidate respects the floors, "hold" included: a busy tier is lifted
        base = with_cpus(current, {n: min(max(t.cpu, floors[n]), app.services[n].max_cpu)
                                   for n, t in current.tiers.items()})

        def move(names: list[str], action: str) -> Allocation:
            cpus = {}
            for n in names:
                cpu = grid.apply(app, n, action, base.tiers[n].cpu)
                cpus[n] = min(max(cpu, floors[n]), app.services[n].max_cpu)
            return with_cpus(base, cpus)

        names = list(current.tiers)
        out: list[tuple[str, Allocation]] = [("hold", base),
                                             ("max", Allocation.static_max(app))]
        for n in names:
            out += [("up", move([n], "up_25pct")), ("up", move([n], "up_50pct"))]
        out.append(("up", move(names, "up_25pct")))
        victims = [n for n, t in self._reduced_at.items() if len(history) - t <= VICTIM_S]
        if victims:
            out.append(("up", move(victims, "up_25pct")))
        out.append(("down", move(names, "down_10pct")))
        for n in names:
            out += [("down", move([n], "down_10pct")), ("down", move([n], "down_1core"))]
        by_util = sorted(names, key=lambda n: util[n])
        for k in LEAST_UTILISED_K:
            if k < len(names):
                out.append(("down", move(by_util[:k], "down_10pct")))
        seen: set = set()
        kinds, cands = [], []
        for kind, alloc in out:
            key = tuple(t.cpu for t in alloc.tiers.values())
            if kind not in ("hold", "max") and (key in seen or alloc == base):
                continue
            seen.add(key)
            kinds.append(kind)
            cands.append(alloc)
        return kinds, cands

    def _utilisation(self, history: list[Observation], current: Allocation) -> dict[str, float]:
        recent = history[-UTIL_WINDOW:]
        util = {}
        for n in current.tiers:
            used = [o.tiers[n].cpu_used / max(o.tiers[n].cpu_limit, 1e-9)
                    for o in recent if n in o.tiers]
            util[n] = float(np.mean(used)) if used else 0.0
        return util

    @staticmethod
    def _load_rising(history: list[Observation]) -> bool:
        """True when the last second's load is more than 2% above the mean of the 4 before."""
        def rps(o: Observation) -> float:
            return o.offered_rps or sum(c.throughput_rps for c in o.classes.values())

        before = [rps(o) for o in history[-WINDOW:-1]]
        base = float(np.mean(before)) if before else 0.0
        return base > 0 and rps(history[-1]) > base * (1.0 + RPS_RISE)


def _ceil_step(cpu: float, step: float) -> float:
    return round(np.ceil(cpu / step - 1e-9) * step, 6)
