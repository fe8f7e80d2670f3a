"""Baseline controllers a user would pick instead of Ursa or Sinan, and the controller registry.

- :class:`StaticController` keeps every tier at its ``max_cpu`` (``Allocation.static_max``).
- :class:`HPAController` is the Kubernetes Horizontal Pod Autoscaler with its real defaults:
  ``desired = ceil(current * utilisation / target)``, no change within a 10% tolerance, a sync
  every 15 s, a 5-minute scale-down stabilisation window (the highest recommendation in the window
  wins) and scale-up limited to ``max(+4 pods, +100%)`` per 15 s. ``time_scale`` shrinks every time
  constant for short runs.

Controllers are found by name through :data:`CONTROLLERS` (name -> ``"module:attribute"``,
imported lazily), so a part adds its own controller with one line or :func:`register_controller`.
"""

from __future__ import annotations

import inspect
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leanstack.errors import LeanstackError
from leanstack.microservices.app import AppSpec
from leanstack.microservices.controller import Controller
from leanstack.microservices.observation import Allocation, Observation, TierAllocation
from leanstack.registry import checked_options, load_target

CONTROLLERS: dict[str, str] = {
    "static": "leanstack.microservices.controllers:StaticController",
    "hpa": "leanstack.microservices.controllers:HPAController",
    "ursa": "leanstack.ursa.controller:UrsaController",
    "sinan": "leanstack.sinan.controller:SinanController",
}
"""Controller name -> ``"module:factory"``; the factory takes keyword options only."""

_FACTORIES: dict[str, Callable[..., Controller]] = {}


def register_controller(name: str, target: str | Callable[..., Controller]) -> None:
    """Make ``name`` resolvable by :func:`make_controller` (a factory or ``"module:attr"``)."""
    if isinstance(target, str):
        CONTROLLERS[name] = target
    else:
        _FACTORIES[name] = target
        CONTROLLERS[name] = f"{target.__module__}:{target.__qualname__}"


def controller_names() -> list[str]:
    """Names :func:`make_controller` accepts."""
    return sorted(CONTROLLERS)


def make_controller(name: str, **opts: Any) -> Controller:
    """Build a controller by name; options set to ``None`` are left at the controller's default."""
    if name not in CONTROLLERS:
        raise LeanstackError(f"unknown controller '{name}' — use one of "
                             f"{', '.join(controller_names())}")
    factory = _FACTORIES.get(name) or load_target(CONTROLLERS[name], f"controller '{name}'")
    opts = checked_options(f"controller '{name}'", factory, opts)
    return factory(**typed_options(name, factory, opts))


def typed_options(name: str, factory: Callable[..., Any],
                  opts: dict[str, Any]) -> dict[str, Any]:
    """Each option converted to the type the factory declares for it (``"false"`` -> False,
    ``"3"`` -> 3); a value that does not fit is a one-line error, before any run starts."""
    try:
        hints = typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory)
    except (NameError, TypeError):
        hints = {}
    return {k: _convert(name, k, v, hints.get(k)) for k, v in opts.items()}


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _convert(name: str, key: str, value: Any, hint: Any) -> Any:
    if hint is None or hint is Any:
        return value
    kinds = [k for k in (typing.get_args(hint) or (hint,)) if k is not type(None)]
    for kind in (bool, int, float):  # the most specific reading first
        if kind not in kinds and not (kind is int and float in kinds):
            continue
        got = _as(kind, value)
        if got is not None:
            return float(got) if kind is int and int not in kinds else got
    if isinstance(value, str | Path) and (str in kinds or Path in kinds):
        return str(value) if str in kinds else Path(value)
    if any(isinstance(value, k) for k in kinds  # e.g. a Plan given from Python
           if isinstance(k, type) and k not in (bool, int, float)):
        return value
    wanted = " or ".join(_KIND_WORDS.get(k, getattr(k, "__name__", str(k))) for k in kinds)
    raise LeanstackError(f"controller '{name}' option '{key}' expects {wanted}, got {value!r} — "
                         f"e.g. --opt {key}={_EXAMPLES.get(kinds[0], 'VALUE')}")


_KIND_WORDS = {bool: "true/false", int: "a whole number", float: "a number", str: "text",
               Path: "a path"}
_EXAMPLES = {bool: "false", int: "3", float: "0.2", str: "NAME", Path: "FILE"}


def _as(kind: type, value: Any) -> Any:
    """``value`` read as ``kind`` (bool, int or float), or ``None`` when it is not one."""
    if isinstance(value, str):
        text = value.strip().lower()
        if kind is bool:
            return True if text in _TRUE else False if text in _FALSE else None
        try:
            number = kind(text)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    if isinstance(value, bool):
        return value if kind is bool else None
    if kind is int:
        return value if isinstance(value, int) else None
    if kind is float and isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


class StaticController:
    """Every tier at its maximum allocation, for the whole run (the over-provisioned baseline)."""

    name = "static"

    def __init__(self) -> None:
        self._alloc: Allocation | None = None

    def reset(self, app: AppSpec, interval_s: float) -> Allocation:
        """Return ``Allocation.static_max(app)``."""
        self._alloc = Allocation.static_max(app)
        return self._alloc

    def decide(self, history: list[Observation], current: Allocation) -> Allocation:
        """Always the static maximum."""
        assert self._alloc is not None, "reset() first"
        return self._alloc

    def describe(self) -> dict[str, Any]:
        """Name and policy."""
        return {"name": self.name, "policy": "every tier at max_cpu with its configured replicas"}


# Kubernetes defaults (pkg/controller/podautoscaler and the autoscaling/v2 behavior defaults).
HPA_SYNC_S = 15.0
HPA_STABILIZATION_S = 300.0
HPA_SCALE_UP_PERIOD_S = 15.0
HPA_SCALE_UP_PODS = 4
HPA_SCALE_UP_PERCENT = 100.0
HPA_TOLERANCE = 0.1
HPA_TARGET_UTILIZATION = 0.8


@dataclass
class _TierState:
    """What the HPA remembers about one scalable tier."""

    pod_cpu: float
    replicas: int
    recommendations: list[tuple[float, int]]  # (t, desired replicas) in the stabilisation window
    scale_ups: list[tuple[float, int]]  # (t, pods added) inside the scale-up policy period


def hpa_start_replicas(configured: int, min_replicas: int, max_replicas: int,
                       initial: int | None = None) -> int:
    """The pods a logic tier starts with under the HPA: ``initial`` when given, else half the
    HPA range (rounded up) or the app's configured replicas if more, clamped to the range."""
    if initial is not None:
        return initial
    return min(max(configured, min_replicas, math.ceil(max_replicas / 2)), max_replicas)


class HPAController:
    """The Kubernetes Horizontal Pod Autoscaler on CPU utilisation, per logic tier.

    Each logic tier is a Deployment of pods of ``max_cpu / max_replicas`` cores (the pod's CPU
    request and limit); its allocation is ``replicas * pod_cpu``. Storage tiers are not scalable
    and stay at their maximum. Utilisation is CPU used over CPU requested, averaged over the
    observations since the previous sync.
    """

    name = "hpa"

    def __init__(self, target_utilization: float = HPA_TARGET_UTILIZATION,
                 min_replicas: int = 1, max_replicas: int = 4,
                 initial_replicas: int | None = None, time_scale: float = 1.0,
                 tolerance: float = HPA_TOLERANCE) -> None:
        if not 0 < target_utilization <= 1.5:
            raise LeanstackError(f"HPA target utilisation must be in (0, 1.5], got "
                                 f"{target_utilization}")
        if not 1 <= min_replicas <= max_replicas:
            raise LeanstackError(f"HPA needs 1 <= min_replicas <= max_replicas, got "
                                 f"{min_replicas} and {max_replicas}")
        if not (time_scale > 0 and math.isfinite(time_scale)):
            raise LeanstackError(f"--time-scale must be above 0, got {time_scale}")
        if not 0 <= tolerance < 1:
            raise LeanstackError(f"HPA tolerance must be in [0, 1), got {tolerance}")
        if initial_replicas is not None and not min_replicas <= initial_replicas <= max_replicas:
            raise LeanstackError(f"HPA initial_replicas {initial_replicas} is outside "
                                 f"[{min_replicas}, {max_replicas}]")
        self.target = target_utilization
        self.min_replicas = min_replicas
        self.max_replicas = max_replicas
        self.initial_replicas = initial_replicas
        self.time_scale = time_scale
        self.tolerance = tolerance
        self.sync_s = HPA_SYNC_S * time_scale
        self.stabilization_s = HPA_STABILIZATION_S * time_scale
        self.scale_up_period_s = HPA_SCALE_UP_PERIOD_S * time_scale
        self._interval_s = 1.0
        self._base: Allocation | None = None
        self._tiers: dict[str, _TierState] = {}
        self._last_sync_t = 0.0

    def reset(self, app: AppSpec, interval_s: float) -> Allocation:
        """Start every logic tier as a Kubernetes user would deploy it: ``initial_replicas``
        when given, else half the HPA range (rounded up) or its configured replicas if more,
        clamped to the range — room to scale both ways, not one small pod per tier."""
        self._interval_s = interval_s
        self._base = Allocation.static_max(app)
        self._last_sync_t = 0.0
        self._tiers = {}
        for name, svc in app.services.items():
            if not svc.scalable:
                continue
            start = hpa_start_replicas(svc.replicas, self.min_replicas, self.max_replicas,
                                       self.initial_replicas)
            self._tiers[name] = _TierState(svc.max_cpu / self.max_replicas, start, [], [])
        return self._allocation()

    def decide(self, history: list[Observation], current: Allocation) -> Allocation:
        """Run an HPA sync when ``sync_s`` has passed since the last one; otherwise hold."""
        if not history:
            return self._allocation()
        now = history[-1].t
        if now - self._last_sync_t < self.sync_s - 1e-9:
            return self._allocation()
        window = [o for o in history if o.t > self._last_sync_t + 1e-9]
        self._last_sync_t = now
        for name, st in self._tiers.items():
            util = self._utilization(name, st, window)
            if util is not None:
                self._sync_tier(st, util, now)
        return self._allocation()

    def utilization(self, name: str, window: list[Observation]) -> float | None:
        """CPU used over CPU requested for tier ``name``, averaged over ``window``."""
        return self._utilization(name, self._tiers[name], window)

    def replicas(self) -> dict[str, int]:
        """Current replica count per scalable tier."""
        return {n: st.replicas for n, st in self._tiers.items()}

    def describe(self) -> dict[str, Any]:
        """The effective HPA constants, the time scaling, and each tier's pod size."""
        steps = max(1, math.ceil(self.sync_s / self._interval_s - 1e-9))
        return {
            "name": self.name,
            "target_utilization": self.target,
            "tolerance": self.tolerance,
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "time_scale": self.time_scale,
            "sync_period_s": self.sync_s,
            "effective_sync_period_s": steps * self._interval_s,
            "scale_down_stabilization_s": self.stabilization_s,
            "scale_up_policy": (f"max({HPA_SCALE_UP_PODS} pods, {HPA_SCALE_UP_PERCENT:g}%) "
                                f"per {self.scale_up_period_s:g} s"),
            "kubernetes_defaults": {"sync_period_s": HPA_SYNC_S,
                                    "scale_down_stabilization_s": HPA_STABILIZATION_S,
                                    "scale_up_period_s": HPA_SCALE_UP_PERIOD_S},
            "pod_cpu": {n: st.pod_cpu for n, st in self._tiers.items()},
        }

    def _utilization(self, name: str, st: _TierState,
                     window: list[Observation]) -> float | None:
        used = [(o.tiers[name].cpu_used, o.interval_s) for o in window if name in o.tiers]
        if not used:
            return None
        seconds = sum(dt for _, dt in used)
        mean_used = sum(u * dt for u, dt in used) / seconds
        return mean_used / (st.replicas * st.pod_cpu)

    def _sync_tier(self, st: _TierState, util: float, now: float) -> None:
        ratio = util / self.target
        if abs(ratio - 1.0) <= self.tolerance:
            desired = st.replicas
        else:
            desired = math.ceil(st.replicas * ratio - 1e-9)
        desired = min(max(desired, self.min_replicas), self.max_replicas)

        # Scale-down stabilisation: never go below the highest recommendation in the window.
        st.recommendations = [(t, r) for t, r in st.recommendations
                              if t > now - self.stabilization_s + 1e-9]
        st.recommendations.append((now, desired))
        down_floor = max(r for _, r in st.recommendations)
        new = st.replicas
        if new < desired:
            new = desired
        if new > down_floor:
            new = down_floor

        # Scale-up policies: max(+4 pods, +100%) relative to the replicas at the period's start.
        st.scale_ups = [(t, d) for t, d in st.scale_ups
                        if t > now - self.scale_up_period_s + 1e-9]
        if new > st.replicas:
            period_start = st.replicas - sum(d for _, d in st.scale_ups)
            limit = max(period_start + HPA_SCALE_UP_PODS,
                        math.ceil(period_start * (1 + HPA_SCALE_UP_PERCENT / 100)))
            new = min(new, limit, self.max_replicas)
            if new > st.replicas:
                st.scale_ups.append((now, new - st.replicas))
        st.replicas = new

    def _allocation(self) -> Allocation:
        assert self._base is not None, "reset() first"
        tiers = dict(self._base.tiers)
        for name, st in self._tiers.items():
            tiers[name] = TierAllocation(round(st.replicas * st.pod_cpu, 6), st.replicas)
        return Allocation(tiers)
