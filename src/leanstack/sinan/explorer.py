"""Sinan's data-collection explorer: a per-tier multi-armed bandit, run as a Controller.

Each second, for every tier, the explorer picks one of the paper's actions (see ``actions``).
Arms are keyed by ``(tier, state, resulting CPU)`` with the state the quantised end-to-end
latency (buckets of 0.2 QoS, the paper's 100 ms at 500 ms QoS) and RPS (buckets of 20). An arm
counts how often its CPU value "satisfied QoS": an action is satisfied after ``CREDIT_S`` seconds
without a violation, and a violation blames every action of the last ``CREDIT_S`` seconds. The
reward of an arm is the expected shrink of its Bernoulli confidence interval from one more
sample, multiplied by the paper's strong bias toward reductions. With probability 1% the
explorer picks a random allocation and with 5% it holds.

Our additions (our collection lasts minutes, not the paper's hours): a violation sends every
tier back to its maximum, from where the explorer descends again, so the data covers the
controller's own trajectory (start at max, step down) many times and shows the backlog draining
at max; and each tier acts with probability ``act_share`` (25%) per second and holds otherwise,
so a descent takes tens of seconds instead of every tier dropping at once.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from leanstack.microservices.app import AppSpec
from leanstack.microservices.observation import Allocation, Observation
from leanstack.sinan.actions import ACTIONS, CpuGrid, with_cpus
from leanstack.sinan.features import (
    P99,
    WINDOW,
    SinanConstants,
    latency_vector,
    violated,
)

CREDIT_S = 5
"""Seconds after which an action without a violation counts as satisfied (the paper's 5 s)."""

BIAS = {"down_10pct": 4.1, "down_1core": 4.0, "hold": 2.0,
        "up_25pct": 0.05, "up_50pct": 0.025, "up_1core": 0.025}
"""The paper's reward multipliers per action: strongly toward reductions."""

RPS_BUCKET = 20.0


def ci_shrink(ok: int, n: int) -> float:
    """Expected shrink of a Bernoulli confidence half-width from one more sample."""
    p = (ok + 1.0) / (n + 2.0)
    return math.sqrt(p * (1.0 - p)) * (1.0 / math.sqrt(n + 1.0) - 1.0 / math.sqrt(n + 2.0))


class BanditExplorer:
    """The collection policy; options: ``seed``, ``random_share``, ``hold_share``."""

    name = "sinan-explore"

    def __init__(self, seed: int = 0, random_share: float = 0.01,
                 hold_share: float = 0.05, act_share: float = 0.25) -> None:
        self.seed = seed
        self.act_share = act_share
        self.random_share = random_share
        self.hold_share = hold_share
        self.grid = CpuGrid()
        self.consts = SinanConstants()
        self._rng = np.random.default_rng(seed)
        self._app: AppSpec | None = None
        self._arms: dict[tuple, list[int]] = {}  # (tier, state, cpu) -> [satisfied, tries]
        self._pending: list[tuple[int, list[tuple]]] = []  # (decided at step, arm keys)

    def reset(self, app: AppSpec, interval_s: float) -> Allocation:
        """Start at the static maximum; the arm statistics carry over between runs."""
        self._app = app
        self._pending = []
        return Allocation.static_max(app)

    def decide(self, history: list[Observation], current: Allocation) -> Allocation:
        """Credit past actions, then pick the next allocation (max during the first 5 s)."""
        assert self._app is not None, "reset() first"
        step = len(history)
        obs = history[-1]
        self._credit(step, violated(obs))
        if step < WINDOW:
            return current
        draw = self._rng.random()
        if draw < self.random_share:
            return self._random(current)
        if draw < self.random_share + self.hold_share:
            return current
        if bool(latency_vector(obs)[P99] > 1.0) or violated(obs):
            return Allocation.static_max(self._app)  # recover, then descend again
        state = self._state(obs)
        cpus: dict[str, float] = {}
        keys = []
        for tier, ta in current.tiers.items():
            if self._rng.random() >= self.act_share:
                continue
            best, best_val = ta.cpu, -1.0
            for action in ACTIONS:
                cpu = self.grid.apply(self._app, tier, action, ta.cpu)
                ok, n = self._arms.get((tier, state, cpu), (0, 0))
                val = BIAS[action] * ci_shrink(ok, n) * (1.0 + 1e-3 * self._rng.random())
                if val > best_val:
                    best, best_val = cpu, val
            cpus[tier] = best
            keys.append((tier, state, best))
        self._pending.append((step, keys))
        return with_cpus(current, cpus)

    def describe(self) -> dict[str, Any]:
        """Policy constants."""
        return {"name": self.name, "bias": BIAS, "credit_s": CREDIT_S,
                "random_share": self.random_share, "hold_share": self.hold_share,
                "act_share": self.act_share,
                "latency_bucket_qos": self.consts.bucket, "rps_bucket": RPS_BUCKET,
                "floor_cpu": self.grid.floor, "step_cpu": self.grid.step,
                "arms": len(self._arms), "seed": self.seed}

    def arm(self, tier: str, state: tuple, cpu: float) -> tuple[int, int]:
        """(satisfied, tries) of one arm."""
        ok, n = self._arms.get((tier, state, cpu), (0, 0))
        return ok, n

    def _state(self, obs: Observation) -> tuple[int, int]:
        lat = float(latency_vector(obs)[P99])
        rps = obs.offered_rps or sum(c.throughput_rps for c in obs.classes.values())
        return int(lat / self.consts.bucket), int(rps / RPS_BUCKET)

    def _credit(self, step: int, violation: bool) -> None:
        keep = []
        for decided, keys in self._pending:
            if violation or step - decided >= CREDIT_S:
                for key in keys:
                    arm = self._arms.setdefault(key, [0, 0])
                    arm[0] += not violation
                    arm[1] += 1
            else:
                keep.append((decided, keys))
        self._pending = keep

    def _random(self, current: Allocation) -> Allocation:
        assert self._app is not None
        cpus = {}
        for tier in current.tiers:
            lo = self.grid.tier_floor(self._app, tier)
            hi = self._app.services[tier].max_cpu
            cpus[tier] = self.grid.snap(self._app, tier, float(self._rng.uniform(lo, hi)))
        return with_cpus(current, cpus)
