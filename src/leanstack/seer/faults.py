"""Faults to inject, their random draw per episode, and a backend wrapper that applies them.

A :class:`Fault` is the ground truth of one episode: which kind, on which tier, when it starts,
how long it lasts, how fast it ramps to full strength and how strong it gets. Kinds:

- ``cpu_hog``: a CPU burner in the tier's cgroup takes ``severity`` of its CPU time;
- ``quota_squeeze``: the tier's CFS quota is cut to ``1 - severity`` of its allocation;
- ``memory_pressure``: memory grows and reclaim slows the tier's work (``severity`` of its time);
- ``slow_downstream``: each visit to the tier waits ``severity`` x 100 ms before its work;
- ``noisy_neighbour``: the same contention as ``cpu_hog``, on a storage tier (redis/memcached);
- ``edge_delay``: network delay of ``severity`` x 100 ms on one call edge, from ``caller`` to
  ``tier``: the callee's own latency stays normal, its caller waits (simulator only).

Contention builds up like load: over the ramp, the tier's slowdown (its effective load) grows
linearly to full severity, and a delay grows linearly to its full length.

On the simulator each kind becomes a :class:`~leanstack.microservices.sim.TierFault`
(service-time slowdown, capacity loss, added delay, memory); on the local backend
:mod:`leanstack.seer.local_faults` starts the real interference.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from leanstack.errors import LeanstackError
from leanstack.microservices.app import AppSpec
from leanstack.microservices.load import LoadSpec
from leanstack.microservices.observation import Allocation, Observation, Span

FAULT_KINDS = ("cpu_hog", "quota_squeeze", "memory_pressure", "slow_downstream",
               "noisy_neighbour", "edge_delay")
STORAGE_KINDS = ("noisy_neighbour",)
"""Kinds that target storage tiers; the others target logic tiers (``edge_delay``: any
callee)."""
SIM_ONLY_KINDS = ("edge_delay",)
"""Kinds only the simulator can inject."""
DELAY_KINDS = ("slow_downstream", "edge_delay")
"""Kinds whose severity is a delay (x 100 ms) rather than a share of the tier's CPU."""

SEVERITY = {
    "cpu_hog": (0.6, 0.97),
    "quota_squeeze": (0.6, 0.97),
    "memory_pressure": (0.5, 0.95),
    "slow_downstream": (0.05, 0.5),
    "noisy_neighbour": (0.8, 0.995),
    "edge_delay": (0.15, 0.8),
}
"""Range each kind's severity is drawn from (uniformly)."""

DECOY_LOAD = (0.2, 0.55)
DECOY_SEVERITY = {**SEVERITY, "slow_downstream": (0.02, 0.08), "edge_delay": (0.02, 0.08)}
"""A decoy is a second, milder anomaly on another tier (a hog the tier absorbs, a few ms of
delay): visible in that tier's signals, but not what breaks QoS."""

MEMORY_GROWTH_BYTES = 512 << 20
"""Extra resident memory of a ``memory_pressure`` fault at full strength."""

RAMP_S = (4.0, 40.0)
SUDDEN_RAMP_S = (1.0, 4.0)
FAST_SHARE = 0.3
"""A drawn fault reaches full strength over ``RAMP_S`` seconds (building up like load), or, in
``FAST_SHARE`` of the draws, over ``SUDDEN_RAMP_S`` (a sudden fault)."""


@dataclass(frozen=True)
class Fault:
    """One injected fault: ``kind`` on ``tier`` from ``start_s`` for ``duration_s`` seconds,
    ramping to ``severity`` over ``ramp_s`` seconds; ``caller`` is the calling tier of an
    ``edge_delay`` (the delayed edge is ``caller`` -> ``tier``)."""

    kind: str
    tier: str
    start_s: float
    duration_s: float
    severity: float
    ramp_s: float = 0.0
    caller: str = ""

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise LeanstackError(f"unknown fault kind '{self.kind}' — use one of "
                                 f"{', '.join(FAULT_KINDS)}")
        if not (self.duration_s > 0 and self.start_s >= 0 and self.ramp_s >= 0):
            raise LeanstackError(f"fault needs start >= 0, duration > 0 and ramp >= 0, got "
                                 f"start={self.start_s}, duration={self.duration_s}, "
                                 f"ramp={self.ramp_s}")
        lo, hi = 0.0, 0.999 if self.kind not in DELAY_KINDS else 5.0
        if not lo < self.severity <= hi:
            raise LeanstackError(f"{self.kind} severity must be in ({lo}, {hi}], got "
                                 f"{self.severity}")
        if (self.kind == "edge_delay") != bool(self.caller):
            raise LeanstackError(f"{self.kind} on '{self.tier}': a caller tier is needed for "
                                 "edge_delay and for no other kind — pass the calling tier "
                                 "(seer inject --caller TIER) only with edge_delay")

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s

    def strength(self, t: float) -> float:
        """Share of full severity in force at time ``t`` (0 outside the fault)."""
        if not self.start_s <= t < self.end_s:
            return 0.0
        if self.ramp_s <= 0:
            return 1.0
        return min(1.0, (t - self.start_s + 1e-9) / self.ramp_s)

    def level(self, strength: float) -> float:
        """The severity in force at ``strength`` (0..1) of the ramp: a delay grows linearly;
        a share of the tier's CPU grows so its slowdown ``1 / (1 - share)`` -- the tier's
        effective load -- grows linearly, as contention that builds up like load does."""
        if strength <= 0:
            return 0.0
        if self.kind in DELAY_KINDS or strength >= 1:
            return self.severity * min(strength, 1.0)
        return 1.0 - 1.0 / (1.0 + strength * self.severity / (1.0 - self.severity))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Fault:
        return cls(**d)


def check_target(app: AppSpec, fault: Fault) -> None:
    """Fail with a one-line error when ``fault`` names no tier of ``app`` or the wrong kind."""
    svc = app.services.get(fault.tier)
    if svc is None:
        raise LeanstackError(f"fault tier '{fault.tier}' is not in app '{app.name}' — use one "
                             f"of {', '.join(app.services)}")
    if fault.kind == "edge_delay":
        callers = callers_of(app, fault.tier)
        if fault.caller not in callers:
            raise LeanstackError(f"edge_delay: '{fault.caller}' does not call '{fault.tier}' in "
                                 f"app '{app.name}' — use a caller of it: "
                                 f"{', '.join(callers) or 'none (pick another tier)'}")
        return
    if (fault.kind in STORAGE_KINDS) != svc.is_storage:
        want = "a storage" if fault.kind in STORAGE_KINDS else "a logic"
        raise LeanstackError(f"fault '{fault.kind}' targets {want} tier; '{fault.tier}' is "
                             f"{svc.kind} — pick another tier or kind")


def kinds_for(backend: str, kinds: tuple[str, ...]) -> tuple[str, ...]:
    """``kinds`` without those ``backend`` cannot inject (a one-line error when none is left)."""
    out = kinds if backend == "sim" else tuple(k for k in kinds if k not in SIM_ONLY_KINDS)
    if not out:
        raise LeanstackError(f"fault kinds {', '.join(kinds)} run on the simulator only — use "
                             "--backend sim or other kinds")
    return out


def callers_of(app: AppSpec, tier: str) -> list[str]:
    """The tiers with a call (or queue push) edge to ``tier``."""
    out = []
    for name, svc in app.services.items():
        if any(c.service == tier for e in svc.endpoints.values() for c in e.calls) or any(
                app.services[c.service].queue == tier
                for e in svc.endpoints.values() for c in e.enqueue):
            out.append(name)
    return out


def draw_ramp(rng: np.random.Generator, room_s: float,
              ramp_s: tuple[float, float] = RAMP_S, fast_share: float = FAST_SHARE) -> float:
    """A ramp length: from ``SUDDEN_RAMP_S`` in ``fast_share`` of the draws, else from
    ``ramp_s``; at most ``room_s``."""
    lo, hi = SUDDEN_RAMP_S if rng.random() < fast_share else ramp_s
    return round(float(min(rng.uniform(lo, hi), max(room_s, SUDDEN_RAMP_S[0]))), 1)


TARGET_LOAD = (0.7, 1.6)
"""Range of the faulty tier's effective CPU load (its utilisation once the fault takes its
share) that CPU-type faults are drawn to reach: from a slowdown the tier absorbs to overload."""


def draw_fault(app: AppSpec, rng: np.random.Generator, duration_s: float,
               kinds: tuple[str, ...] = FAULT_KINDS, warmup_s: float = 15.0,
               ramp_s: tuple[float, float] = RAMP_S, fast_share: float = FAST_SHARE,
               utilisation: dict[str, float] | None = None,
               target_load: tuple[float, float] = TARGET_LOAD,
               severity: dict[str, tuple[float, float]] | None = None,
               exclude: str | None = None) -> Fault:
    """A random fault for an episode of ``duration_s``: random kind among ``kinds``, a random
    tier it applies to (for ``edge_delay`` a callee and one of its callers), start after
    ``warmup_s``, a ramp drawn by :func:`draw_ramp` (``ramp_s``, ``fast_share``), then 10-20 s
    at full strength (less when the episode is too short).

    With the tiers' ``utilisation`` (CPU used over what they may use, at the episode's load),
    a CPU-type fault's severity is drawn so the tier's effective load lands in
    :data:`TARGET_LOAD` — an idle tier needs a far stronger hog than a busy one to hurt;
    without it (and for delays) severities come from ``severity`` (default
    :data:`SEVERITY`). ``exclude`` names a tier not to pick."""
    logic = [n for n, s in app.services.items() if not s.is_storage and n != exclude]
    storage = [n for n, s in app.services.items() if s.is_storage and n != exclude]
    callees = [n for n in app.services if n != exclude and callers_of(app, n)]
    pools = {k: storage if k in STORAGE_KINDS else callees if k == "edge_delay" else logic
             for k in kinds}
    usable = [k for k in kinds if pools[k]]
    if not usable:
        raise LeanstackError(f"app '{app.name}' has no tier any of the fault kinds "
                             f"{', '.join(kinds)} applies to")
    kind = usable[int(rng.integers(len(usable)))]
    tiers = pools[kind]
    tier = tiers[int(rng.integers(len(tiers)))]
    caller = ""
    if kind == "edge_delay":
        callers = callers_of(app, tier)
        caller = callers[int(rng.integers(len(callers)))]
    room = max(10.0, duration_s - warmup_s - 5.0)
    ramp = draw_ramp(rng, room - 10.0, ramp_s, fast_share)
    length = min(ramp + float(rng.uniform(10.0, 20.0)), room)
    latest = max(warmup_s, duration_s - length - 5.0)
    start = float(np.floor(rng.uniform(warmup_s, latest)))
    lo, hi = (severity or SEVERITY)[kind]
    strength = float(rng.uniform(lo, hi))
    if utilisation and kind not in DELAY_KINDS and tier in utilisation:
        target = float(rng.uniform(*target_load))
        strength = float(np.clip(1.0 - utilisation[tier] / target, 0.05, 0.995))
    return Fault(kind, tier, start, round(length, 3), round(strength, 3), ramp_s=ramp,
                 caller=caller)


def sim_effect(fault: Fault, strength: float) -> Any:
    """The simulator's :class:`TierFault` for ``fault`` at ``strength`` (0..1); for an
    ``edge_delay`` (not a tier's own fault) the delay in seconds on its edge."""
    from leanstack.microservices.sim import TierFault

    s = fault.level(strength)
    if fault.kind == "edge_delay":
        return 0.1 * s
    if strength <= 0:
        return TierFault()
    if fault.kind in ("cpu_hog", "noisy_neighbour"):
        return TierFault(slowdown=1.0 / (1.0 - s))
    if fault.kind == "quota_squeeze":
        return TierFault(capacity=1.0 - s)
    if fault.kind == "memory_pressure":
        return TierFault(slowdown=1.0 / (1.0 - s), memory_bytes=int(MEMORY_GROWTH_BYTES * s))
    return TierFault(delay_s=0.1 * s)


class FaultInjector:
    """A Backend that wraps another and applies ``faults`` on the wrapped backend's clock.

    A fault's strength is brought up to date at every interval boundary, so its ramp is a
    staircase of control intervals. On the simulator it becomes a ``TierFault``; on the local
    backend the faults are real processes and cgroup settings, started and stopped
    by :class:`leanstack.seer.local_faults.LocalFaults`, which ``close`` always cleans up.
    """

    def __init__(self, backend: Any, faults: list[Fault]) -> None:
        self.inner = backend
        self.faults = list(faults)
        self.name = backend.name
        self.interval_s = backend.interval_s
        self._t = 0.0
        self._local: Any = None
        self._applied: dict[str, float] = {}

    def deploy(self, app: AppSpec, allocation: Allocation) -> None:
        for f in self.faults:
            check_target(app, f)
            if f.kind in SIM_ONLY_KINDS and self.inner.name != "sim":
                raise LeanstackError(f"fault kind {f.kind} runs on the simulator only — use "
                                     "--backend sim or another kind")
        self.inner.deploy(app, allocation)
        if self.inner.name == "local":
            from leanstack.seer.local_faults import LocalFaults


            self._local = LocalFaults(self.inner)
        elif not hasattr(self.inner, "set_fault"):
            raise LeanstackError(f"backend '{self.inner.name}' cannot inject faults — use sim "
                                 "or local")

    def start(self, load: LoadSpec) -> None:
        self.inner.start(load)
        self._apply(0.0)

    def set_allocation(self, allocation: Allocation) -> None:
        self.inner.set_allocation(allocation)
        if self._local is not None:
            self._local.reapply()  # a squeeze stays a squeeze; new workers get the delay

    def observe(self) -> Observation:
        obs = self.inner.observe()
        self._t = obs.t
        self._apply(obs.t)
        return obs

    def spans(self, since_ns: int = 0) -> list[Span]:
        return self.inner.spans(since_ns)

    def close(self) -> None:
        try:
            if self._local is not None:
                self._local.stop_all()
        finally:
            self.inner.close()

    def _apply(self, t: float) -> None:
        """Bring every fault to its strength for the interval that starts at ``t``."""
        for f in self.faults:
            strength = round(f.strength(t + 1e-6), 3)
            key = f"{f.caller}>{f.tier}:{f.kind}"
            if self._applied.get(key) == strength:
                continue
            self._applied[key] = strength
            if self._local is not None:
                self._local.apply(f, strength)
            elif f.kind == "edge_delay":
                self.inner.set_edge_delay(f.caller, f.tier, sim_effect(f, strength))
            else:
                self.inner.set_fault(f.tier, sim_effect(f, strength))
