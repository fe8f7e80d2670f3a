"""Microservice applications as data: the AppSpec TOML format, its loader and its validator.

An app file names its services (tiers) and request classes::

    name = "my-app"

    [services.frontend]
    kind = "logic"            # logic (a worker doing real work) | redis | memcached
    replicas = 1              # worker processes
    max_cpu = 1.0             # cores: the static allocation and every controller's ceiling

    [services.frontend.endpoints.read]
    work = "json"             # json | hash | text | compress | image
    cpu_ms = 0.4              # mean CPU time of the endpoint's own work, at one core
    cv = 0.5                  # coefficient of variation of that CPU time
    calls = [["cache.get"], ["store.get", "other.read"]]  # groups in sequence, each in parallel
    enqueue = ["worker.process"]   # asynchronous edges to queue-fed services

    [services.cache]
    kind = "memcached"

    [classes.read]
    entry = "frontend.read"
    weight = 1.0              # share of the request mix
    sla = { percentile = 99, ms = 50 }   # percentile: one of SLA_PERCENTILES
    priority = 1              # 1 is the most important (Ursa, when capacity is short)

A logic service with ``queue = "some-redis"`` is fed by a Redis list on that service: its endpoints
are reached only through ``enqueue`` edges. A class with ``wait = "pipeline"`` is measured until the
last asynchronous stage it triggered has finished.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leanstack.errors import LeanstackError

APPS_DIR = Path(__file__).parent / "apps"
SERVICE_KINDS = ("logic", "redis", "memcached")
WORK_KINDS = ("json", "hash", "text", "compress", "image")
STORAGE_OPS = {
    "redis": ("get", "set", "lpush", "lrange", "zadd", "zrange"),
    "memcached": ("get", "set"),
}
STORAGE_CLIENTS = {"redis": ("async",), "memcached": ("async", "blocking")}
"""How callers talk to a storage tier: ``async`` (the worker serves other requests while it
waits: redis.asyncio, aiomcache) or ``blocking`` (the worker waits: pymemcache)."""
WAIT_MODES = ("response", "pipeline")
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")
SLA_PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)
"""The latency percentiles every backend measures, so the only ones an SLA may name."""


class AppSpecError(LeanstackError):
    """An app file that cannot be used; the message names file, key, problem and fix."""


@dataclass(frozen=True)
class Call:
    """One edge: a call to ``service.endpoint`` (for storage tiers the endpoint is an operation)."""

    service: str
    endpoint: str

    def __str__(self) -> str:
        return f"{self.service}.{self.endpoint}"


@dataclass(frozen=True)
class Endpoint:
    """An endpoint of a logic service: its own CPU work, then its downstream calls."""

    name: str
    work: str
    cpu_ms: float
    cv: float
    groups: tuple[tuple[Call, ...], ...] = ()
    enqueue: tuple[Call, ...] = ()

    @property
    def calls(self) -> tuple[Call, ...]:
        """Every synchronous call, in order."""
        return tuple(c for g in self.groups for c in g)


@dataclass(frozen=True)
class Service:
    """A tier: a logic service made of worker processes, or a real redis / memcached server."""

    name: str
    kind: str
    replicas: int
    max_cpu: float
    min_cpu: float
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    queue: str | None = None
    op_cpu_ms: float = 0.03
    client: str = "async"  # storage tiers: how callers wait for an answer (STORAGE_CLIENTS)

    @property
    def is_storage(self) -> bool:
        return self.kind != "logic"

    @property
    def blocks_caller(self) -> bool:
        """True when a call to this tier holds the calling worker until the answer is back."""
        return self.client == "blocking"

    @property
    def scalable(self) -> bool:
        """Only logic services change replica count; storage tiers change CPU only."""
        return self.kind == "logic"

    def has_endpoint(self, name: str) -> bool:
        if self.is_storage:
            return name in STORAGE_OPS[self.kind]
        return name in self.endpoints


@dataclass(frozen=True)
class SLA:
    """A tail-latency target: the ``percentile`` of latency must stay at or below ``ms``."""

    percentile: float
    ms: float

    @property
    def key(self) -> str:
        """The percentile's name in observations, e.g. ``p99`` or ``p99.9``."""
        return percentile_key(self.percentile)


@dataclass(frozen=True)
class RequestClass:
    """A request class: where it enters, its share of the mix, its SLA and its priority."""

    name: str
    entry: Call
    weight: float
    sla: SLA
    priority: int
    wait: str = "response"


@dataclass(frozen=True)
class AppSpec:
    """A validated microservice application."""

    name: str
    description: str
    services: dict[str, Service]
    classes: dict[str, RequestClass]
    source: str = "<memory>"

    @property
    def tiers(self) -> list[str]:
        """Service names in file order."""
        return list(self.services)

    def endpoint(self, call: Call) -> Endpoint:
        """The logic endpoint a call reaches."""
        return self.services[call.service].endpoints[call.endpoint]

    def mix(self) -> dict[str, float]:
        """Request-class weights normalised to sum to one."""
        total = sum(c.weight for c in self.classes.values())
        return {n: c.weight / total for n, c in self.classes.items()}

    def to_data(self) -> dict[str, Any]:
        """The app in the app-file format (plain data: ``parse_app`` reads it back)."""
        services: dict[str, Any] = {}
        for n, s in self.services.items():
            t: dict[str, Any] = {"kind": s.kind, "replicas": s.replicas, "max_cpu": s.max_cpu,
                                 "min_cpu": s.min_cpu, "op_cpu_ms": s.op_cpu_ms}
            if s.is_storage:
                t["client"] = s.client
            if s.queue is not None:
                t["queue"] = s.queue
            if s.endpoints:
                t["endpoints"] = {e.name: {"work": e.work, "cpu_ms": e.cpu_ms, "cv": e.cv,
                                           "calls": [[str(c) for c in g] for g in e.groups],
                                           "enqueue": [str(c) for c in e.enqueue]}
                                  for e in s.endpoints.values()}
            services[n] = t
        classes = {n: {"entry": str(c.entry), "weight": c.weight,
                       "sla": {"percentile": c.sla.percentile, "ms": c.sla.ms},
                       "priority": c.priority, "wait": c.wait}
                   for n, c in self.classes.items()}
        return {"name": self.name, "description": self.description, "services": services,
                "classes": classes}


def percentile_key(p: float) -> str:
    """``99`` -> ``"p99"``, ``99.9`` -> ``"p99.9"``."""
    return f"p{p:g}"


def app_names() -> list[str]:
    """Names of the apps shipped with leanstack."""
    return sorted(p.stem for p in APPS_DIR.glob("*.toml"))


def load_app(name_or_path: str | Path) -> AppSpec:
    """Load a shipped app by name (``social-network``) or any app file by path, validated."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = APPS_DIR / f"{name_or_path}.toml"
        if not path.exists():
            raise AppSpecError(
                f"unknown app '{name_or_path}': use one of {', '.join(app_names())} "
                "or a path to an app .toml file"
            )
    if not path.exists():
        raise AppSpecError(f"{path}: no such app file — check the path")
    if not path.is_file():
        raise AppSpecError(f"{path}: not a file — give the path of an app .toml file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise AppSpecError(f"{path}: not UTF-8 text — give an app .toml file") from None
    except OSError as e:
        raise AppSpecError(f"{path}: cannot be read ({e.strerror}) — check its "
                           "permissions") from None
    except tomllib.TOMLDecodeError as e:
        raise AppSpecError(f"{path}: not valid TOML ({e}) — fix the syntax") from None
    return parse_app(data, source=str(path))


def parse_app(data: dict[str, Any], source: str = "<memory>") -> AppSpec:
    """Validate a decoded app file and build its AppSpec."""
    p = _Parser(source)
    return p.app(data)


class _Parser:
    """Reads one app file, raising AppSpecError with file and key on the first problem."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str, fix: str) -> AppSpecError:
        return AppSpecError(f"{self.source}: {key}: {problem} — {fix}")

    def names(self, table: dict[str, Any], where: str) -> None:
        """Service, endpoint and class names: letters, digits, ``-`` and ``_`` (no dots)."""
        for k in table:
            if not NAME_RE.fullmatch(k):
                raise self.fail(f"{where}.{_shown(k)}", "not a valid name",
                                "use letters, digits, '-' and '_' (at most 64)")

    def keys(self, table: dict[str, Any], where: str, allowed: set[str]) -> None:
        for k in table:
            if k not in allowed:
                raise self.fail(
                    f"{where}.{_shown(k)}" if where else _shown(k),
                    "unknown key",
                    f"use one of {', '.join(sorted(allowed))}",
                )

    def number(self, table: dict, key: str, where: str, default: float | None = None,
               low: float = 0.0, strict: bool = False) -> float:
        if key not in table:
            if default is None:
                raise self.fail(f"{where}.{key}", "missing", f"add {key} = <number>")
            return default
        v = table[key]
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise self.fail(f"{where}.{key}", f"expected a number (finite), got {v!r}",
                            "write a number")
        if v < low or (strict and v == low):
            op = ">" if strict else ">="
            raise self.fail(f"{where}.{key}", f"{v} is out of range", f"use a value {op} {low:g}")
        return float(v)

    def call(self, text: Any, where: str) -> Call:
        if (not isinstance(text, str) or text.count(".") != 1
                or not all(NAME_RE.fullmatch(part) for part in text.split("."))):
            raise self.fail(where, f"expected 'service.endpoint', got {text!r}",
                            "write the call as \"service.endpoint\"")
        s, e = text.split(".")
        return Call(s, e)

    def app(self, data: dict[str, Any]) -> AppSpec:
        self.keys(data, "", {"name", "description", "services", "classes"})
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise self.fail("name", "missing or empty", 'add name = "my-app"')
        services_t = data.get("services")
        if not isinstance(services_t, dict) or not services_t:
            raise self.fail("services", "no services", "add at least one [services.NAME] table")
        classes_t = data.get("classes")
        if not isinstance(classes_t, dict) or not classes_t:
            raise self.fail("classes", "no request classes",
                            "add at least one [classes.NAME] table with entry, weight and sla")
        self.names(services_t, "services")
        self.names(classes_t, "classes")
        services = {n: self.service(n, t) for n, t in services_t.items()}
        classes = {n: self.request_class(n, t) for n, t in classes_t.items()}
        app = AppSpec(name, str(data.get("description", "")), services, classes, self.source)
        self.check_edges(app)
        self.check_acyclic(app)
        return app

    def service(self, name: str, t: Any) -> Service:
        where = f"services.{name}"
        if not isinstance(t, dict):
            raise self.fail(where, "expected a table", f"write [{where}]")
        self.keys(t, where, {"kind", "replicas", "max_cpu", "min_cpu", "endpoints", "queue",
                             "op_cpu_ms", "client"})
        kind = t.get("kind", "logic")
        if kind not in SERVICE_KINDS:
            raise self.fail(f"{where}.kind", f"unknown kind {kind!r}",
                            f"use one of {', '.join(SERVICE_KINDS)}")
        replicas = t.get("replicas", 1)
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 1:
            raise self.fail(f"{where}.replicas", f"expected a whole number >= 1, got {replicas!r}",
                            "set replicas = 1 or more")
        if kind != "logic" and replicas != 1:
            raise self.fail(f"{where}.replicas", f"a {kind} tier runs one server",
                            "remove replicas or set it to 1")
        max_cpu = self.number(t, "max_cpu", where, default=1.0, strict=True)
        min_cpu = self.number(t, "min_cpu", where, default=0.1, strict=True)
        if min_cpu > max_cpu:
            raise self.fail(f"{where}.min_cpu", f"{min_cpu} is above max_cpu {max_cpu}",
                            "make min_cpu <= max_cpu")
        op_cpu_ms = self.number(t, "op_cpu_ms", where, default=0.03)
        queue = t.get("queue")
        endpoints_t = t.get("endpoints", {})
        if kind != "logic":
            if endpoints_t:
                raise self.fail(f"{where}.endpoints", f"a {kind} tier has fixed operations "
                                f"({', '.join(STORAGE_OPS[kind])})", "remove the endpoints table")
            if queue is not None:
                raise self.fail(f"{where}.queue", "only logic services consume queues",
                                "remove queue")
            client = t.get("client", "async")
            if client not in STORAGE_CLIENTS[kind]:
                raise self.fail(f"{where}.client", f"a {kind} tier's client is not {client!r}",
                                f"use one of {', '.join(STORAGE_CLIENTS[kind])}")
            return Service(name, kind, 1, max_cpu, min_cpu, {}, None, op_cpu_ms, client)
        if "client" in t:
            raise self.fail(f"{where}.client", "only storage tiers have a client",
                            "remove client")
        if not isinstance(endpoints_t, dict) or not endpoints_t:
            raise self.fail(f"{where}.endpoints", "a logic service needs endpoints",
                            f"add a [{where}.endpoints.NAME] table")
        if queue is not None and not isinstance(queue, str):
            raise self.fail(f"{where}.queue", f"expected a service name, got {queue!r}",
                            'write queue = "some-redis-service"')
        self.names(endpoints_t, f"{where}.endpoints")
        endpoints = {e: self.endpoint(f"{where}.endpoints.{e}", e, et)
                     for e, et in endpoints_t.items()}
        return Service(name, kind, replicas, max_cpu, min_cpu, endpoints, queue, op_cpu_ms)

    def endpoint(self, where: str, name: str, t: Any) -> Endpoint:
        if not isinstance(t, dict):
            raise self.fail(where, "expected a table", f"write [{where}]")
        self.keys(t, where, {"work", "cpu_ms", "cv", "calls", "enqueue"})
        work = t.get("work", "json")
        if work not in WORK_KINDS:
            raise self.fail(f"{where}.work", f"unknown work kind {work!r}",
                            f"use one of {', '.join(WORK_KINDS)}")
        cpu_ms = self.number(t, "cpu_ms", where)
        cv = self.number(t, "cv", where, default=0.5)
        groups_t = t.get("calls", [])
        if not isinstance(groups_t, list) or not all(isinstance(g, list) for g in groups_t):
            raise self.fail(f"{where}.calls", "expected a list of groups of calls",
                            'write calls = [["a.x"], ["b.y", "c.z"]] (groups run in sequence)')
        groups = tuple(
            tuple(self.call(c, f"{where}.calls[{i}][{j}]") for j, c in enumerate(g))
            for i, g in enumerate(groups_t) if g
        )
        enq_t = t.get("enqueue", [])
        if not isinstance(enq_t, list):
            raise self.fail(f"{where}.enqueue", "expected a list of calls",
                            'write enqueue = ["stage.process"]')
        enqueue = tuple(self.call(c, f"{where}.enqueue[{i}]") for i, c in enumerate(enq_t))
        return Endpoint(name, work, cpu_ms, cv, groups, enqueue)

    def request_class(self, name: str, t: Any) -> RequestClass:
        where = f"classes.{name}"
        if not isinstance(t, dict):
            raise self.fail(where, "expected a table", f"write [{where}]")
        self.keys(t, where, {"entry", "weight", "sla", "priority", "wait"})
        if "entry" not in t:
            raise self.fail(f"{where}.entry", "missing", 'add entry = "frontend.endpoint"')
        entry = self.call(t["entry"], f"{where}.entry")
        weight = self.number(t, "weight", where, strict=True)
        sla_t = t.get("sla")
        if not isinstance(sla_t, dict):
            raise self.fail(f"{where}.sla", "missing SLA",
                            "add sla = { percentile = 99, ms = 100 }")
        self.keys(sla_t, f"{where}.sla", {"percentile", "ms"})
        pct = self.number(sla_t, "percentile", f"{where}.sla", strict=True)
        if pct not in SLA_PERCENTILES:
            raise self.fail(f"{where}.sla.percentile", f"{pct:g} is not a measured percentile",
                            f"use one of {', '.join(f'{p:g}' for p in SLA_PERCENTILES)}")
        ms = self.number(sla_t, "ms", f"{where}.sla", strict=True)
        priority = t.get("priority", 1)
        if not isinstance(priority, int) or isinstance(priority, bool) or priority < 1:
            raise self.fail(f"{where}.priority", f"expected a whole number >= 1, got {priority!r}",
                            "use 1 for the most important class, 2 for the next, ...")
        wait = t.get("wait", "response")
        if wait not in WAIT_MODES:
            raise self.fail(f"{where}.wait", f"unknown wait mode {wait!r}",
                            f"use one of {', '.join(WAIT_MODES)}")
        return RequestClass(name, entry, weight, SLA(pct, ms), priority, wait)

    def check_call(self, app: AppSpec, call: Call, where: str) -> Service:
        svc = app.services.get(call.service)
        if svc is None:
            raise self.fail(where, f"unknown service '{call.service}'",
                            f"use one of {', '.join(app.services)}")
        if not svc.has_endpoint(call.endpoint):
            options = STORAGE_OPS[svc.kind] if svc.is_storage else tuple(svc.endpoints)
            raise self.fail(where, f"service '{call.service}' has no endpoint '{call.endpoint}'",
                            f"use one of {', '.join(options)}")
        return svc

    def check_edges(self, app: AppSpec) -> None:
        for s in app.services.values():
            if s.queue is not None:
                q = app.services.get(s.queue)
                if q is None or q.kind != "redis":
                    raise self.fail(f"services.{s.name}.queue",
                                    f"'{s.queue}' is not a redis service of this app",
                                    "name a service with kind = \"redis\"")
            for e in s.endpoints.values():
                where = f"services.{s.name}.endpoints.{e.name}"
                for c in e.calls:
                    target = self.check_call(app, c, f"{where}.calls")
                    if target.queue is not None:
                        raise self.fail(f"{where}.calls", f"'{c}' is queue-fed",
                                        f"move it to enqueue = [\"{c}\"]")
                for c in e.enqueue:
                    target = self.check_call(app, c, f"{where}.enqueue")
                    if target.queue is None:
                        raise self.fail(f"{where}.enqueue", f"'{c.service}' has no queue",
                                        f"set queue = \"<redis service>\" on services.{c.service}"
                                        " or call it synchronously")
        for rc in app.classes.values():
            where = f"classes.{rc.name}.entry"
            svc = self.check_call(app, rc.entry, where)
            if svc.is_storage or svc.queue is not None:
                raise self.fail(where, f"'{rc.entry}' cannot take requests from clients",
                                "enter through a logic service that is not queue-fed")
            if rc.wait == "pipeline" and not _reaches_queue(app, rc.entry):
                raise self.fail(f"classes.{rc.name}.wait", "no asynchronous stage follows "
                                f"'{rc.entry}'", 'use wait = "response"')

    def check_acyclic(self, app: AppSpec) -> None:
        state: dict[Call, int] = {}  # 1 = on the current path, 2 = done

        def visit(node: Call, path: list[Call]) -> None:
            state[node] = 1
            svc = app.services[node.service]
            if not svc.is_storage:
                ep = svc.endpoints[node.endpoint]
                for nxt in (*ep.calls, *ep.enqueue):
                    if state.get(nxt) == 1:
                        cycle = " -> ".join(str(c) for c in [*path, node, nxt])
                        raise self.fail(f"services.{node.service}.endpoints.{node.endpoint}",
                                        f"call cycle {cycle}", "remove one edge of the cycle")
                    if nxt not in state:
                        visit(nxt, [*path, node])
            state[node] = 2

        for s in app.services.values():
            for e in s.endpoints:
                if Call(s.name, e) not in state:
                    visit(Call(s.name, e), [])


def _shown(key: Any) -> str:
    """A key as it may appear in a one-line message (odd ones quoted)."""
    return key if isinstance(key, str) and NAME_RE.fullmatch(key) else repr(key)


def _reaches_queue(app: AppSpec, start: Call) -> bool:
    svc = app.services[start.service]
    if svc.is_storage:
        return False
    ep = svc.endpoints[start.endpoint]
    return bool(ep.enqueue) or any(_reaches_queue(app, c) for c in ep.calls)
