"""The data every backend produces and every controller consumes.

An :class:`Allocation` is what a controller decides (per tier: CPU cores and replicas); an
:class:`Observation` is what a backend reports for one control interval; a :class:`Span` is one
RPC, in OpenTelemetry's span model. The simulator and the local backend both produce the same
types, so controllers run unchanged on either.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from leanstack.microservices.app import SLA_PERCENTILES, AppSpec, percentile_key

PERCENTILES = SLA_PERCENTILES
"""Latency percentiles every observation reports, as keys ``p50`` ... ``p99.9``."""


def percentiles_ms(values_ms: Sequence[float] | np.ndarray) -> dict[str, float]:
    """``{"p50": ..., "p99.9": ...}`` of the values (numpy's linear interpolation); ``{}`` for
    none. The one percentile rule of every backend and of the result summary."""
    if len(values_ms) == 0:
        return {}
    qs = np.percentile(np.asarray(values_ms, dtype=float), PERCENTILES)
    return {percentile_key(p): float(q) for p, q in zip(PERCENTILES, qs, strict=True)}


def failures_break_sla(completed: int, errors: int, sla_key: str) -> bool:
    """Failed requests count as infinitely slow: when their share is above the tail the SLA's
    percentile allows (1% for p99), the SLA is violated whatever the completed ones did."""
    total = completed + errors
    return total > 0 and errors / total > 1.0 - float(sla_key[1:]) / 100.0


def sla_violated(completed: int, errors: int, latency_ms: dict[str, float], sla_ms: float,
                 sla_key: str) -> bool | None:
    """The one SLA rule: violated when failures break it (:func:`failures_break_sla`) or the
    latency at the SLA's percentile is above ``sla_ms``; ``None`` when there were no requests."""
    if completed + errors == 0:
        return None
    if failures_break_sla(completed, errors, sla_key):
        return True
    return completed > 0 and latency_ms.get(sla_key, 0.0) > sla_ms


@dataclass(frozen=True)
class TierAllocation:
    """CPU cores for the whole tier (CFS quota over all replicas) and its worker count."""

    cpu: float
    replicas: int = 1


@dataclass(frozen=True)
class Allocation:
    """Per-tier allocation; ``tiers`` maps service name -> TierAllocation."""

    tiers: dict[str, TierAllocation]

    @classmethod
    def static_max(cls, app: AppSpec) -> Allocation:
        """Every tier at its ``max_cpu`` with its configured replicas (the static baseline)."""
        return cls({n: TierAllocation(s.max_cpu, s.replicas) for n, s in app.services.items()})

    def total_cpu(self) -> float:
        return sum(t.cpu for t in self.tiers.values())

    def with_tier(self, name: str, cpu: float | None = None,
                  replicas: int | None = None) -> Allocation:
        """A copy with one tier changed."""
        cur = self.tiers[name]
        new = replace(cur, cpu=cur.cpu if cpu is None else cpu,
                      replicas=cur.replicas if replicas is None else replicas)
        return Allocation({**self.tiers, name: new})

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {n: {"cpu": t.cpu, "replicas": t.replicas} for n, t in self.tiers.items()}


@dataclass
class ClassStats:
    """One request class over one interval. Latencies in ms from the scheduled send time."""

    completed: int = 0
    errors: int = 0
    throughput_rps: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)  # "p50" .. "p99.9"
    sla_ms: float = 0.0
    sla_key: str = "p99"

    @property
    def violated(self) -> bool:
        """True when this interval violates the SLA (:func:`sla_violated`)."""
        return bool(sla_violated(self.completed, self.errors, self.latency_ms, self.sla_ms,
                                 self.sla_key))


@dataclass
class TierStats:
    """One tier over one interval, read from cgroup files and the services themselves."""

    cpu_limit: float = 0.0  # cores (quota / period)
    cpu_used: float = 0.0  # cores, averaged over the interval
    throttled_periods: int = 0  # CFS periods in which the tier was throttled
    throttled_s: float = 0.0  # seconds of throttling in the interval
    memory_bytes: int = 0
    inflight: float = 0.0  # requests inside the tier (mean over the interval)
    replicas: int = 1
    rps: float = 0.0  # requests the tier served per second
    latency_ms: dict[str, float] = field(default_factory=dict)  # tier's span latency
    # the tier's own share: span latency minus time waiting on its calls, plus queue wait for a
    # queue-fed tier (what a per-tier latency budget is about)
    own_latency_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class Observation:
    """Everything a controller may look at for one control interval."""

    t: float  # end of the interval, seconds since the run began
    interval_s: float
    classes: dict[str, ClassStats]
    tiers: dict[str, TierStats]
    offered_rps: float = 0.0  # the load generator's scheduled rate over the interval
    cfs_period_ms: float | None = None  # period of the tiers' CFS CPU quotas, where known

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Observation:
        return cls(
            t=d["t"], interval_s=d["interval_s"], offered_rps=d.get("offered_rps", 0.0),
            cfs_period_ms=d.get("cfs_period_ms"),
            classes={k: ClassStats(**v) for k, v in d["classes"].items()},
            tiers={k: TierStats(**v) for k, v in d["tiers"].items()},
        )


@dataclass(frozen=True)
class Span:
    """One RPC in OpenTelemetry's span model; times in nanoseconds since the epoch (or sim start).

    ``attributes`` carries ``leanstack.class`` (request class), ``leanstack.cpu_ms`` (CPU the
    service's own work used) and, for queue consumers, ``leanstack.queue_ms``.
    """

    trace_id: str
    span_id: str
    parent_span_id: str
    service: str
    name: str  # endpoint or storage operation
    start_ns: int
    end_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6

    def otlp_span(self) -> dict[str, Any]:
        """This span as an OTLP JSON span object (without its resource)."""
        attrs = [{"key": k, "value": _otlp_value(v)} for k, v in self.attributes.items()]
        return {"traceId": self.trace_id, "spanId": self.span_id,
                "parentSpanId": self.parent_span_id, "name": self.name, "kind": 2,
                "startTimeUnixNano": str(self.start_ns), "endTimeUnixNano": str(self.end_ns),
                "attributes": attrs}

    @classmethod
    def from_otlp_span(cls, service: str, s: dict[str, Any]) -> Span:
        """A span from an OTLP JSON span object and its resource's ``service.name``."""
        attrs = {a["key"]: _from_otlp_value(a["value"]) for a in s.get("attributes", [])}
        return cls(s["traceId"], s["spanId"], s.get("parentSpanId", ""), service, s["name"],
                   int(s["startTimeUnixNano"]), int(s["endTimeUnixNano"]), attrs)

    def to_otlp(self) -> str:
        """One OTLP JSON line: a resourceSpans record holding this span."""
        return json.dumps({"resourceSpans": [{
            "resource": {"attributes": [
                {"key": "service.name", "value": {"stringValue": self.service}}]},
            "scopeSpans": [{"scope": {"name": "leanstack"}, "spans": [self.otlp_span()]}],
        }]}, separators=(",", ":"))

    @classmethod
    def from_otlp(cls, line: str) -> Span:
        """Parse a line written by :meth:`to_otlp`."""
        rs = json.loads(line)["resourceSpans"][0]
        service = rs["resource"]["attributes"][0]["value"]["stringValue"]
        return cls.from_otlp_span(service, rs["scopeSpans"][0]["spans"][0])


def own_latencies_ms(spans: Sequence[Span],
                     earlier: Sequence[Span] = ()) -> dict[str, list[float]]:
    """Per service, each span's own latency: its duration minus the time covered by its
    synchronous child spans (their union, clipped to the span), plus its queue wait.

    Children of a queue consumer's producer (spans with ``leanstack.queue_ms``) run after the
    producer answered and are not subtracted. ``earlier`` holds spans of the previous batch, whose
    children may have been read one batch before their parent.
    """
    children: dict[str, list[tuple[int, int]]] = {}
    for c in (*earlier, *spans):
        if c.parent_span_id and "leanstack.queue_ms" not in c.attributes:
            children.setdefault(c.parent_span_id, []).append((c.start_ns, c.end_ns))
    out: dict[str, list[float]] = {}
    for s in spans:
        waited = _covered_ns(children.get(s.span_id, []), s.start_ns, s.end_ns)
        own_ms = (s.end_ns - s.start_ns - waited) / 1e6
        own_ms += float(s.attributes.get("leanstack.queue_ms", 0.0))
        out.setdefault(s.service, []).append(own_ms)
    return out


def _covered_ns(intervals: list[tuple[int, int]], lo: int, hi: int) -> int:
    """Length of the union of ``intervals`` inside ``[lo, hi]``."""
    covered, reach = 0, lo
    for start, end in sorted(intervals):
        start, end = max(start, reach), min(end, hi)
        if end > start:
            covered += end - start
            reach = end
    return covered


def _otlp_value(v: Any) -> dict[str, Any]:
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    return {"stringValue": str(v)}


def _from_otlp_value(v: dict[str, Any]) -> Any:
    if "intValue" in v:
        return int(v["intValue"])
    if "doubleValue" in v:
        return float(v["doubleValue"])
    if "boolValue" in v:
        return bool(v["boolValue"])
    return v.get("stringValue", "")
