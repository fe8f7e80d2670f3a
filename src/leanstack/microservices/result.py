"""The ExperimentResult JSON every experiment run writes, and the summary computed from it.

Layout::

    {"app", "backend", "controller", "duration_s", "interval_s",
     "summary": {"violation_rate", "mean_cpu", "requests", "errors", "classes": {...}, ...},
     "timeline": [{"t", "interval_s", "offered_rps", "classes", "tiers", "allocation",
                   "decision_ms"}, ...],
     "settings": {"controller": ..., "load": ...},
     "environment": {"wall_s", "python", "packages", "cpu_count", "command", "timestamp", ...}}

A timeline entry is one control interval: the backend's Observation plus the allocation that was
in force during it.

Definitions used by the summary:

- A class *violates* in an interval when it had requests (completed or failed) and either its
  latency at the SLA percentile exceeds the SLA, or so many requests failed that the percentile
  cannot be met (failed requests count as infinitely slow: ``errors / requests > 1 - pct / 100``).
- ``violation_rate`` = violated intervals / measured intervals, where an interval is violated
  when any class violates, and *measured* means at least one request completed or failed in it.
  Empty intervals (no traffic at all) are left out of both counts.
- ``violation_rate_after_warmup``: the same over intervals ending after the first
  ``WARMUP_S`` seconds (a controller's start-up left out); ``None`` when none do.
- Per class, ``violation_rate`` counts only intervals in which that class had requests.
- ``mean_cpu`` = time-averaged sum of allocated cores over every interval (empty ones included).
- ``decision_ms_median`` / ``decision_ms_p90``: wall time of the controller's ``decide`` call
  per interval (the control plane's cost), ``None`` when the timeline does not record it.
- Per class ``p99_ms`` (and ``tail_ms`` at the SLA percentile) is the median over measured
  intervals of the per-interval value; ``*_worst_ms`` is the largest.
"""

from __future__ import annotations

import json
import platform
import statistics
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from leanstack.errors import LeanstackError
from leanstack.microservices.observation import percentiles_ms, sla_violated
from leanstack.provenance import command_line, runtime_environment
from leanstack.schema import Count, FileModel, Finite, NonNegative, PercentileKey, Positive, check


class ClassEntry(FileModel):
    """One class in one timeline entry (an Observation's ClassStats)."""

    completed: Count = 0
    errors: Count = 0
    throughput_rps: NonNegative = 0.0
    latency_ms: dict[str, NonNegative] = {}
    sla_ms: NonNegative = 0.0
    sla_key: PercentileKey = "p99"


class TierEntry(FileModel):
    """One tier in one timeline entry (an Observation's TierStats)."""

    cpu_limit: NonNegative = 0.0
    cpu_used: NonNegative = 0.0
    rps: NonNegative = 0.0
    replicas: Count = 1
    latency_ms: dict[str, NonNegative] = {}
    own_latency_ms: dict[str, NonNegative] = {}


class AllocationEntry(FileModel):
    cpu: NonNegative
    replicas: Count = 1


class TimelineEntry(FileModel):
    """One control interval: the observation and the allocation in force during it."""

    t: Finite
    interval_s: Positive
    offered_rps: NonNegative = 0.0
    classes: dict[str, ClassEntry]
    tiers: dict[str, TierEntry]
    allocation: dict[str, AllocationEntry]


class ClassSummary(FileModel):
    violation_rate: NonNegative
    completed: Count
    errors: Count


class Summary(FileModel):
    """The summary block (:func:`summarize`); the report reads these keys."""

    violation_rate: NonNegative
    mean_cpu: NonNegative
    requests: Count
    completed: Count
    errors: Count
    intervals: Count
    intervals_measured: Count
    intervals_violated: Count
    classes: dict[str, ClassSummary]
    violation_rate_after_warmup: NonNegative | None = None


class ResultFile(FileModel):
    """The schema of an ExperimentResult file (see the module docstring)."""

    app: str
    backend: str
    controller: str
    duration_s: NonNegative
    interval_s: Positive = 1.0
    completed: bool = True
    summary: Summary
    timeline: list[TimelineEntry]
    settings: dict[str, Any] = {}
    environment: dict[str, Any]


WARMUP_S = 60.0
"""The start-up left out of ``violation_rate_after_warmup`` (the first minute)."""


def class_violated(stats: dict[str, Any]) -> bool | None:
    """Whether one class's interval stats violate its SLA (observation's
    :func:`~leanstack.microservices.observation.sla_violated`); ``None`` without requests."""
    return sla_violated(stats.get("completed", 0), stats.get("errors", 0),
                        stats.get("latency_ms", {}), stats.get("sla_ms", 0.0),
                        stats.get("sla_key", "p99"))


def interval_violated(entry: dict[str, Any]) -> bool | None:
    """Whether any class violates in a timeline entry; ``None`` for an interval without traffic."""
    verdicts = [class_violated(c) for c in entry["classes"].values()]
    measured = [v for v in verdicts if v is not None]
    if not measured:
        return None
    return any(measured)


def violation_rate(timeline: list[dict[str, Any]]) -> float:
    """Fraction of measured intervals in which any class's tail latency exceeds its SLA."""
    verdicts = [v for v in (interval_violated(e) for e in timeline) if v is not None]
    return sum(verdicts) / len(verdicts) if verdicts else 0.0


def mean_cpu(timeline: list[dict[str, Any]]) -> float:
    """Time-averaged sum of allocated cores."""
    seconds = sum(e["interval_s"] for e in timeline)
    if seconds == 0:
        return 0.0
    return sum(_alloc_total(e) * e["interval_s"] for e in timeline) / seconds


def summarize(timeline: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary block of a result (see the module docstring for every definition)."""
    seconds = sum(e["interval_s"] for e in timeline) or 1.0
    verdicts = [interval_violated(e) for e in timeline]
    measured = [v for v in verdicts if v is not None]
    classes: dict[str, Any] = {}
    for name in _class_names(timeline):
        rows = [e["classes"][name] for e in timeline if name in e["classes"]]
        classes[name] = _class_summary(rows)
    completed = sum(c["completed"] for c in classes.values())
    errors = sum(c["errors"] for c in classes.values())
    return {
        "violation_rate": violation_rate(timeline),
        "violation_rate_after_warmup": (violation_rate(settled) if (settled := [
            e for e in timeline if e["t"] > WARMUP_S + 1e-9]) else None),
        "mean_cpu": mean_cpu(timeline),
        "mean_cpu_used": sum(_used_total(e) * e["interval_s"] for e in timeline) / seconds,
        "requests": completed + errors,
        "completed": completed,
        "errors": errors,
        "intervals": len(timeline),
        "intervals_measured": len(measured),
        "intervals_violated": sum(measured),
        "mean_offered_rps": sum(e.get("offered_rps", 0.0) * e["interval_s"]
                                for e in timeline) / seconds,
        "mean_throughput_rps": sum(sum(c.get("throughput_rps", 0.0)
                                       for c in e["classes"].values()) * e["interval_s"]
                                   for e in timeline) / seconds,
        "p99_ms": {n: c["p99_ms"] for n, c in classes.items()},
        "classes": classes,
        **_decision_summary(timeline),
    }


def _decision_summary(timeline: list[dict[str, Any]]) -> dict[str, float | None]:
    q = percentiles_ms([e["decision_ms"] for e in timeline if "decision_ms" in e])
    return {"decision_ms_median": q.get("p50"), "decision_ms_p90": q.get("p90")}


def _class_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    measured = [r for r in rows if class_violated(r) is not None]
    with_latency = [r for r in measured if r.get("completed", 0) > 0]
    key = rows[0].get("sla_key", "p99") if rows else "p99"
    p99 = [r["latency_ms"].get("p99", 0.0) for r in with_latency]
    tail = [r["latency_ms"].get(key, 0.0) for r in with_latency]
    violated = sum(bool(class_violated(r)) for r in measured)
    return {
        "sla_key": key,
        "sla_ms": rows[0].get("sla_ms", 0.0) if rows else 0.0,
        "completed": sum(r.get("completed", 0) for r in rows),
        "errors": sum(r.get("errors", 0) for r in rows),
        "violation_rate": violated / len(measured) if measured else 0.0,
        "p99_ms": statistics.median(p99) if p99 else None,
        "p99_worst_ms": max(p99) if p99 else None,
        "tail_ms": statistics.median(tail) if tail else None,
        "tail_worst_ms": max(tail) if tail else None,
    }


def _class_names(timeline: Iterable[dict[str, Any]]) -> list[str]:
    names: dict[str, None] = {}
    for e in timeline:
        names.update(dict.fromkeys(e["classes"]))
    return list(names)


def _alloc_total(entry: dict[str, Any]) -> float:
    return sum(t["cpu"] for t in entry["allocation"].values())


def _used_total(entry: dict[str, Any]) -> float:
    return sum(t.get("cpu_used", 0.0) for t in entry["tiers"].values())



def load_result(path: str | Path) -> dict[str, Any]:
    """Read and check an ExperimentResult JSON file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise LeanstackError(f"{path}: no such result file — check the path") from None
    except json.JSONDecodeError as e:
        raise LeanstackError(f"{path}: not valid JSON ({e}) — rerun the experiment") from None
    except UnicodeDecodeError:
        raise LeanstackError(f"{path}: not UTF-8 text — pass a file written by 'leanstack micro "
                             "run'") from None
    except IsADirectoryError:
        raise LeanstackError(f"{path}: a directory — pass a result JSON file") from None
    check(ResultFile, data, path, "pass a file written by 'leanstack micro run'")
    return data


def build_result(app: str, backend: str, controller: str, interval_s: float,
                 timeline: list[dict[str, Any]], settings: dict[str, Any],
                 environment: dict[str, Any], completed: bool = True) -> dict[str, Any]:
    """Assemble an ExperimentResult dict; ``duration_s`` is the observed time covered."""
    return {
        "app": app,
        "backend": backend,
        "controller": controller,
        "duration_s": sum(e["interval_s"] for e in timeline),
        "interval_s": interval_s,
        "completed": completed,
        "summary": summarize(timeline),
        "timeline": timeline,
        "settings": settings,
        "environment": environment,
    }


PACKAGES = ("leanstack", "numpy", "scipy", "aiohttp", "hdrhistogram", "matplotlib", "redis",
            "pymemcache")


def environment(wall_s: float, command: list[str] | None = None) -> dict[str, Any]:
    """Where and how a result was produced: versions, core count, the exact command, time."""
    return {
        "wall_s": round(wall_s, 3),
        **runtime_environment(PACKAGES),
        "platform": platform.platform(),
        "command": command_line(command),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }
