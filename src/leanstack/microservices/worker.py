"""The service process of a logic tier: ``python -m leanstack.microservices.worker --app FILE
--service NAME --port P --admin-port A --run-dir DIR``.

Each worker is an aiohttp server; the tier's ``replicas`` workers share one port through
SO_REUSEPORT. A request to ``POST /<endpoint>`` does the endpoint's own real work (see
:mod:`~leanstack.microservices.work`), then its call groups in sequence (the calls of a group
concurrently): HTTP keep-alive calls to logic tiers, redis.asyncio / aiomcache operations on
storage tiers (a memcached tier with ``client = "blocking"`` is called through the synchronous
pymemcache, which holds the worker until the answer). ``enqueue`` edges push a message onto
the Redis list ``queue:<consumer>`` on the consumer's ``queue`` service; queue-fed workers
consume with BLPOP. For a class with ``wait = "pipeline"``
the entry answers only after every leaf stage of the pipeline it started has pushed to the
request's done key (which the entry BLPOPs on).

Every RPC is recorded as a :class:`~leanstack.microservices.observation.Span` (server spans, and
client spans for storage calls) in OTLP JSON lines, one file per process in the run dir, with W3C
``traceparent`` propagation; when the OpenTelemetry environment names a traces endpoint
(``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, see :mod:`~leanstack.microservices.otlp`) the spans are
also POSTed there over OTLP/HTTP (``--no-span-files``: only there, as in a pod). The admin
port serves ``/health``, ``/stats`` (JSON the local backend reads each interval) and Prometheus
``/metrics`` (request counts, a latency histogram per endpoint and request class, storage calls:
what :mod:`~leanstack.microservices.prometheus` reads).

Peers are on 127.0.0.1 by default; ``--hosts FILE`` (service -> host name) and ``--bind ADDR``
let the same command run in a Kubernetes pod, where peers are Services.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import aiomcache
import numpy as np
import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pymemcache.client.base import Client as MemcacheClient
from pymemcache.exceptions import MemcacheError

from leanstack.errors import LeanstackError
from leanstack.microservices.app import AppSpec, Call, Endpoint, load_app, parse_app
from leanstack.microservices.observation import Span
from leanstack.microservices.otlp import export_request, traces_endpoint
from leanstack.microservices.work import do_work, draw_cpu_ms

HOST = "127.0.0.1"
CLASS_HEADER = "x-leanstack-class"
DONE_HEADER = "x-leanstack-done"
PIPELINE_TIMEOUT_S = 30.0
SPAN_FLUSH_S = 0.1
OTLP_MAX_PENDING = 100_000
"""Spans held for an OTLP endpoint that does not answer; beyond this they are dropped."""
OTLP_TIMEOUT_S = 5.0
_VALUE = b"v" * 256
MEMCACHED_POOL = 8
"""Connections of an asynchronous memcached client (opened on first use; more calls wait)."""
MEMCACHED_TIMEOUT_S = 5.0
LATENCY_BUCKETS_S = tuple(round(0.0005 * 1.25 ** k, 7) for k in range(50))
"""Latency histogram bounds: 0.5 ms to ~28 s in 25% steps (percentiles to within ~12%)."""


@dataclass(frozen=True)
class TraceContext:
    """What travels with a request: W3C trace and parent span ids, the class, the done key."""

    trace_id: str
    parent_span_id: str
    request_class: str = ""
    done: str = ""  # "<redis service>/<key>" when a pipeline entry waits for this request

    @classmethod
    def from_headers(cls, headers: dict | aiohttp.typedefs.LooseHeaders) -> TraceContext:
        trace_id, parent = parse_traceparent(headers.get("traceparent", ""))
        return cls(trace_id, parent, headers.get(CLASS_HEADER, ""), headers.get(DONE_HEADER, ""))

    def headers(self, span_id: str) -> dict[str, str]:
        """Headers for a downstream call made from span ``span_id``."""
        h = {"traceparent": f"00-{self.trace_id}-{span_id}-01", CLASS_HEADER: self.request_class}
        if self.done:
            h[DONE_HEADER] = self.done
        return h


def parse_traceparent(value: str) -> tuple[str, str]:
    """``(trace_id, parent_span_id)`` from a W3C traceparent; a new root trace if invalid."""
    parts = value.split("-")
    if (len(parts) == 4 and len(parts[1]) == 32 and len(parts[2]) == 16
            and _is_hex(parts[1]) and _is_hex(parts[2]) and parts[1] != "0" * 32):
        return parts[1], parts[2]
    return secrets.token_hex(16), ""


def _is_hex(s: str) -> bool:
    try:
        int(s, 16)
    except ValueError:
        return False
    return True


def async_leaves(app: AppSpec, call: Call) -> int:
    """How many leaf stages of asynchronous pipelines one request to ``call`` finishes with.

    A stage (a queue-fed endpoint run) is a leaf when it triggers no further asynchronous work;
    the entry of a ``wait = "pipeline"`` class waits for this many done signals.
    """
    svc = app.services[call.service]
    if svc.is_storage:
        return 0
    ep = svc.endpoints[call.endpoint]
    n = sum(async_leaves(app, c) for c in ep.calls)
    for target in ep.enqueue:
        n += async_leaves(app, target) or 1
    return n


def done_service(app: AppSpec, call: Call) -> str | None:
    """The redis service that carries the done keys of pipelines started at ``call``."""
    svc = app.services[call.service]
    if svc.is_storage:
        return None
    ep = svc.endpoints[call.endpoint]
    for target in ep.enqueue:
        return app.services[target.service].queue
    for c in ep.calls:
        found = done_service(app, c)
        if found:
            return found
    return None


def queue_key(service: str) -> str:
    """The Redis list a queue-fed service consumes."""
    return f"queue:{service}"


class Worker:
    """One worker process of a logic tier."""

    def __init__(self, app: AppSpec, service: str, ports: dict[str, int], run_dir: Path,
                 seed: int = 0, consumers: int = 2, hosts: dict[str, str] | None = None,
                 otlp_url: str | None = None, span_files: bool = True) -> None:
        self.app = app
        self.svc = app.services[service]
        self.ports = ports
        self.hosts = hosts or {}  # service -> host; 127.0.0.1 when absent
        self.run_dir = run_dir
        self.consumers = consumers
        self.rng = np.random.default_rng(seed + os.getpid())
        self.keys = random.Random(seed + os.getpid())
        self.inflight = 0
        self.inflight_integral = 0.0
        self._last_tick = time.monotonic()
        self.served = 0
        self.errors = 0
        self.work_cpu_s = 0.0
        self._span_lines: list[str] = []
        self._span_path = run_dir / f"spans-{service}-{os.getpid()}.jsonl"
        self.span_files = span_files
        self.otlp_url = otlp_url
        self._otlp_pending: list[Span] = []
        self._otlp_failures = 0
        self._stop = asyncio.Event()
        self.registry = CollectorRegistry()
        labels = ["service", "endpoint"]
        self.m_requests = Counter("leanstack_requests", "Requests served", labels,
                                  registry=self.registry)
        self.m_errors = Counter("leanstack_request_errors", "Requests that failed", labels,
                                registry=self.registry)
        self.m_cpu = Counter("leanstack_work_cpu_seconds", "CPU seconds of own work", labels,
                             registry=self.registry)
        self.m_inflight = Gauge("leanstack_inflight_requests", "Requests in progress",
                                ["service"], registry=self.registry)
        self.m_latency = Histogram("leanstack_request_duration_seconds",
                                   "Server-side latency of requests", [*labels, "class", "ok"],
                                   buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.m_inflight_s = Counter("leanstack_inflight_seconds",
                                    "Integral of in-flight requests over time", ["service"],
                                    registry=self.registry)
        self.m_calls = Counter("leanstack_storage_calls", "Storage operations this worker made",
                               ["service", "op"], registry=self.registry)
        self.m_otlp = Counter("leanstack_otlp_spans", "Spans sent to the OTLP endpoint, or "
                              "dropped when it failed", ["result"], registry=self.registry)
        # Per endpoint: a queue-fed stage that triggers no further asynchronous work signals
        # "done"; a pipeline entry waits for that many leaves on that redis service.
        self._leaf_stage: dict[str, bool] = {}
        self._pipeline_waits: dict[str, tuple[str, int]] = {}
        for e in self.svc.endpoints:
            n, done_at = async_leaves(app, Call(service, e)), done_service(app, Call(service, e))
            self._leaf_stage[e] = self.svc.queue is not None and n == 0
            if n and done_at:
                self._pipeline_waits[e] = (done_at, n)
        self.session: aiohttp.ClientSession | None = None
        self.fault_delay_s = 0.0  # an injected wait before each request's work (fault tests)
        self.redis: dict[str, aioredis.Redis] = {}
        self.memcached: dict[str, MemcacheClient] = {}  # blocking clients
        self.aiomemcached: dict[str, aiomcache.Client] = {}

    # --- life cycle ---------------------------------------------------------------------------

    async def run(self, port: int, admin_port: int, bind: str = HOST) -> None:
        """Serve until SIGTERM/SIGINT, then finish in-flight requests and flush spans."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
            timeout=aiohttp.ClientTimeout(total=PIPELINE_TIMEOUT_S))
        for name, s in self.app.services.items():
            if s.kind == "redis":
                self.redis[name] = aioredis.Redis(host=self.host(name), port=self.ports[name])
            elif s.kind == "memcached" and s.blocks_caller:
                # no_delay: without TCP_NODELAY, Nagle + delayed ACKs stall ~1 call in 10
                # (those after a set) for 40 ms
                self.memcached[name] = MemcacheClient((self.host(name), self.ports[name]),
                                                      no_delay=True,
                                                      connect_timeout=2.0, timeout=5.0)
            elif s.kind == "memcached":  # asyncio streams set TCP_NODELAY themselves
                self.aiomemcached[name] = aiomcache.Client(
                    self.host(name), self.ports[name], pool_size=MEMCACHED_POOL)
        api = web.Application()
        api.router.add_post("/{endpoint}", self.handle)
        api.router.add_get("/health", self.health)
        admin = web.Application()
        admin.router.add_get("/health", self.health)
        admin.router.add_get("/stats", self.stats)
        admin.router.add_get("/metrics", self.metrics)
        admin.router.add_post("/fault", self.set_fault)
        runners = []
        if self.svc.queue is None:
            runners.append(await _serve(api, bind, port, reuse_port=True))
        tasks = [asyncio.create_task(self._consume()) for _ in range(self.consumers)
                 if self.svc.queue is not None]
        tasks.append(asyncio.create_task(self._flush_spans_forever()))
        runners.append(await _serve(admin, bind, admin_port, reuse_port=False))
        await self._stop.wait()
        for r in runners:
            await r.cleanup()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._flush_spans()
        await self._export_spans()
        await self.session.close()
        for r in self.redis.values():
            await r.aclose()
        for m in self.memcached.values():
            m.close()
        for c in self.aiomemcached.values():
            await c.close()

    # --- HTTP handlers ------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.Response:
        ep = self.svc.endpoints.get(request.match_info["endpoint"])
        if ep is None:
            return web.Response(status=404, text=f"no endpoint {request.match_info['endpoint']}")
        await request.read()
        ctx = TraceContext.from_headers(request.headers)
        ok = await self.execute(ep, ctx)
        return web.Response(status=200 if ok else 502, text="ok" if ok else "downstream failed")

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def stats(self, request: web.Request) -> web.Response:
        self._tick()
        return web.json_response({
            "pid": os.getpid(), "service": self.svc.name, "t": self._last_tick,
            "served": self.served, "errors": self.errors, "inflight": self.inflight,
            "inflight_integral_s": self.inflight_integral, "work_cpu_s": self.work_cpu_s,
        })

    async def set_fault(self, request: web.Request) -> web.Response:
        """Admin: ``POST /fault?delay_ms=X`` makes every request wait X ms before its work."""
        try:
            delay_ms = float(request.query.get("delay_ms", "0"))
        except ValueError:
            return web.Response(status=400, text="delay_ms must be a number")
        self.fault_delay_s = max(delay_ms, 0.0) / 1e3
        return web.Response(text="ok")

    async def metrics(self, request: web.Request) -> web.Response:
        self._tick()
        self.m_inflight.labels(self.svc.name).set(self.inflight)
        return web.Response(body=generate_latest(self.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    # --- executing an endpoint ----------------------------------------------------------------

    async def execute(self, ep: Endpoint, ctx: TraceContext, queue_ms: float | None = None) -> bool:
        """Own work, call groups, enqueues, done signals; records the server span."""
        span_id = secrets.token_hex(8)
        start_ns = time.time_ns()
        self._tick()
        self.inflight += 1
        entry_waits = self._waits_for_pipeline(ep, ctx)
        if entry_waits:
            ctx = TraceContext(ctx.trace_id, ctx.parent_span_id, ctx.request_class,
                               f"{entry_waits[0]}/done:{ctx.trace_id}:{span_id}")
        if self.fault_delay_s:
            await asyncio.sleep(self.fault_delay_s)
        cpu_ms = do_work(ep.work, draw_cpu_ms(ep.cpu_ms, ep.cv, self.rng))
        ok = True
        try:
            for group in ep.groups:
                results = await asyncio.gather(*(self.call(c, ctx, span_id) for c in group),
                                               return_exceptions=True)
                if not all(r is True for r in results):
                    ok = False
                    break
            if ok:
                for target in ep.enqueue:
                    await self.enqueue(target, ctx, span_id)
                if ctx.done and self._leaf_stage[ep.name]:
                    await self._signal_done(ctx.done)
                if entry_waits:
                    ok = await self._wait_done(ctx.done, entry_waits[1])
        except (TimeoutError, OSError, aioredis.RedisError) as e:
            print(f"{self.svc.name}.{ep.name}: {type(e).__name__}: {e}", file=sys.stderr)
            ok = False
        end_ns = time.time_ns()
        self._tick()
        self.inflight -= 1
        self.served += 1
        self.work_cpu_s += cpu_ms / 1e3
        self.m_requests.labels(self.svc.name, ep.name).inc()
        self.m_cpu.labels(self.svc.name, ep.name).inc(cpu_ms / 1e3)
        self.m_latency.labels(self.svc.name, ep.name, ctx.request_class,
                              "true" if ok else "false").observe((end_ns - start_ns) / 1e9)
        attrs: dict = {"leanstack.class": ctx.request_class, "leanstack.cpu_ms": cpu_ms}
        if queue_ms is not None:
            attrs["leanstack.queue_ms"] = queue_ms
        if not ok:
            self.errors += 1
            self.m_errors.labels(self.svc.name, ep.name).inc()
            attrs["error"] = True
        self._record(Span(ctx.trace_id, span_id, ctx.parent_span_id, self.svc.name, ep.name,
                          start_ns, end_ns, attrs))
        return ok

    async def call(self, call: Call, ctx: TraceContext, span_id: str) -> bool:
        """One synchronous call: HTTP to a logic tier, or a storage operation (client span)."""
        target = self.app.services[call.service]
        if not target.is_storage:
            return await self._http_call(call, ctx.headers(span_id))
        start_ns = time.time_ns()
        ok = True
        try:
            if target.kind == "redis":
                await self._redis_op(call.service, call.endpoint)
            elif target.blocks_caller:
                self._memcached_op(call.service, call.endpoint)
            else:
                await self._aiomemcached_op(call.service, call.endpoint)
        except (OSError, aioredis.RedisError, MemcacheError, aiomcache.exceptions.ClientException,
                asyncio.IncompleteReadError) as e:
            print(f"{call}: {type(e).__name__}: {e}", file=sys.stderr)
            ok = False
        self._client_span(ctx, span_id, call.service, call.endpoint, start_ns, ok)
        return ok

    async def _http_call(self, call: Call, headers: dict[str, str]) -> bool:
        url = f"http://{self.host(call.service)}:{self.ports[call.service]}/{call.endpoint}"
        for attempt in range(2):  # a replica that was just stopped may drop a kept-alive socket
            try:
                async with self.session.post(url, data=b"{}", headers=headers) as resp:
                    await resp.read()
                    return resp.status == 200
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as e:
                if attempt:
                    print(f"{call}: {type(e).__name__}: {e}", file=sys.stderr)
            except (TimeoutError, aiohttp.ClientError) as e:
                print(f"{call}: {type(e).__name__}: {e}", file=sys.stderr)
                return False
        return False

    async def _redis_op(self, service: str, op: str) -> None:
        r = self.redis[service]
        key = f"k{self.keys.randrange(1000)}"
        if op == "get":
            await r.get(key)
        elif op == "set":
            await r.set(key, _VALUE)
        elif op == "lrange":
            await r.lrange(key, 0, 9)
        elif op == "zrange":
            await r.zrange(key, 0, 9, desc=True)
        elif op == "lpush":
            await r.pipeline(transaction=False).lpush(key, _VALUE).ltrim(key, 0, 99).execute()
        elif op == "zadd":
            member = f"m{self.keys.randrange(1 << 30)}"
            pipe = r.pipeline(transaction=False).zadd(key, {member: time.time()})
            await pipe.zremrangebyrank(key, 0, -101).execute()

    async def _aiomemcached_op(self, service: str, op: str) -> None:
        client = self.aiomemcached[service]
        key = f"k{self.keys.randrange(1000)}".encode()
        async with asyncio.timeout(MEMCACHED_TIMEOUT_S):
            if op == "get":
                await client.get(key)
            else:
                await client.set(key, _VALUE)

    def _memcached_op(self, service: str, op: str) -> None:
        # pymemcache is synchronous: a loopback get/set costs ~15 us of CPU inline, against
        # ~100 us through a thread pool; the event loop waits for the reply (tens of us).
        client = self.memcached[service]
        key = f"k{self.keys.randrange(1000)}"
        if op == "get":
            client.get(key)
        else:
            client.set(key, _VALUE)

    # --- asynchronous edges -------------------------------------------------------------------

    async def enqueue(self, target: Call, ctx: TraceContext, span_id: str) -> None:
        """Push a message for ``target`` onto its consumer's Redis list (client span)."""
        queue = self.app.services[target.service].queue
        msg = json.dumps({"endpoint": target.endpoint, "traceparent": ctx.headers(span_id)[
            "traceparent"], "class": ctx.request_class, "done": ctx.done,
            "enqueued_ns": time.time_ns()})
        start_ns = time.time_ns()
        await self.redis[queue].rpush(queue_key(target.service), msg)
        self._client_span(ctx, span_id, queue, "rpush", start_ns, True)

    async def _consume(self) -> None:
        r = self.redis[self.svc.queue]
        key = queue_key(self.svc.name)
        while not self._stop.is_set():
            try:
                item = await r.blpop([key], timeout=1)
            except (OSError, aioredis.RedisError) as e:
                print(f"consume {key}: {type(e).__name__}: {e}", file=sys.stderr)
                await asyncio.sleep(0.5)
                continue
            if item is None:
                continue
            msg = json.loads(item[1])
            ep = self.svc.endpoints.get(msg["endpoint"])
            if ep is None:
                print(f"consume {key}: unknown endpoint {msg['endpoint']!r}", file=sys.stderr)
                continue
            trace_id, parent = parse_traceparent(msg["traceparent"])
            ctx = TraceContext(trace_id, parent, msg.get("class", ""), msg.get("done", ""))
            await self.execute(ep, ctx, queue_ms=(time.time_ns() - msg["enqueued_ns"]) / 1e6)

    def _waits_for_pipeline(self, ep: Endpoint, ctx: TraceContext) -> tuple[str, int] | None:
        """(done-key redis service, leaf count) when this request is a pipeline class's entry."""
        rc = self.app.classes.get(ctx.request_class)
        if rc is None or rc.wait != "pipeline" or rc.entry != Call(self.svc.name, ep.name):
            return None
        return self._pipeline_waits.get(ep.name)

    async def _signal_done(self, done: str) -> None:
        service, key = done.split("/", 1)
        r = self.redis[service]
        await r.pipeline(transaction=False).rpush(key, 1).expire(key, 60).execute()

    async def _wait_done(self, done: str, n: int) -> bool:
        service, key = done.split("/", 1)
        r = self.redis[service]
        deadline = time.monotonic() + PIPELINE_TIMEOUT_S
        for _ in range(n):
            left = deadline - time.monotonic()
            if left <= 0 or await r.blpop([key], timeout=max(1, round(left))) is None:
                return False
        return True

    # --- bookkeeping --------------------------------------------------------------------------

    def host(self, service: str) -> str:
        """Where ``service`` answers (127.0.0.1 unless ``--hosts`` said otherwise)."""
        return self.hosts.get(service, HOST)

    def _tick(self) -> None:
        now = time.monotonic()
        area = self.inflight * (now - self._last_tick)
        self.inflight_integral += area
        self.m_inflight_s.labels(self.svc.name).inc(area)
        self._last_tick = now

    def _client_span(self, ctx: TraceContext, parent: str, service: str, op: str,
                     start_ns: int, ok: bool) -> None:
        attrs: dict = {"leanstack.class": ctx.request_class, "leanstack.cpu_ms": 0.0,
                       "leanstack.span_kind": "client", "leanstack.caller": self.svc.name}
        self.m_calls.labels(service, op).inc()
        if not ok:
            attrs["error"] = True
        self._record(Span(ctx.trace_id, secrets.token_hex(8), parent, service, op, start_ns,
                          time.time_ns(), attrs))

    def _record(self, span: Span) -> None:
        if self.span_files:
            self._span_lines.append(span.to_otlp())
        if self.otlp_url:
            if len(self._otlp_pending) < OTLP_MAX_PENDING:
                self._otlp_pending.append(span)
            else:
                self.m_otlp.labels("dropped").inc()

    async def _export_spans(self) -> None:
        """POST the spans recorded since the last export to the OTLP endpoint (one request)."""
        if not self._otlp_pending:
            return
        batch, self._otlp_pending = self._otlp_pending, []
        try:
            async with self.session.post(
                    self.otlp_url, data=export_request(batch),
                    headers={"Content-Type": "application/json"},
                    timeout=aiohttp.ClientTimeout(total=OTLP_TIMEOUT_S)) as resp:
                await resp.read()
                if resp.status != 200:
                    raise aiohttp.ClientError(f"HTTP {resp.status}")
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            self.m_otlp.labels("dropped").inc(len(batch))
            if self._otlp_failures % 100 == 0:  # the first failure, then every 100th
                print(f"OTLP export to {self.otlp_url}: {type(e).__name__}: {e} "
                      f"({len(batch)} spans dropped)", file=sys.stderr)
            self._otlp_failures += 1
            return
        self.m_otlp.labels("sent").inc(len(batch))

    def _flush_spans(self) -> None:
        if not self._span_lines:
            return
        data = "\n".join(self._span_lines) + "\n"
        self._span_lines.clear()
        with open(self._span_path, "a") as f:
            f.write(data)

    async def _flush_spans_forever(self) -> None:
        while True:
            await asyncio.sleep(SPAN_FLUSH_S)
            self._flush_spans()
            await self._export_spans()


async def _serve(app: web.Application, host: str, port: int, reuse_port: bool) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_port=reuse_port, backlog=1024).start()
    return runner


def load_app_file(path: Path) -> AppSpec:
    """An app from a ``.toml`` app file or its JSON form (``AppSpec.to_data``, how the local
    backend passes it); either is validated like any app file."""
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise LeanstackError(f"{path}: not an app JSON file ({e})") from None
        if not isinstance(data, dict):
            raise LeanstackError(f"{path}: not an app JSON file (expected an object)")
        return parse_app(data, source=str(path))
    return load_app(path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--app", required=True, type=Path, help="app .toml (or its .json form) file")
    p.add_argument("--service", required=True, help="the logic service this worker runs")
    p.add_argument("--port", type=int, required=True, help="shared service port (SO_REUSEPORT)")
    p.add_argument("--admin-port", type=int, required=True, help="this process's stats port")
    p.add_argument("--run-dir", type=Path, required=True, help="where spans are written")
    p.add_argument("--ports", type=Path, help="JSON file: service -> port (default RUN_DIR/"
                   "ports.json)")
    p.add_argument("--hosts", type=Path, help="JSON file: service -> host (default 127.0.0.1 "
                   "for every service)")
    p.add_argument("--bind", default=HOST, help="address to listen on (0.0.0.0 in a pod)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--consumers", type=int, default=2, help="BLPOP loops of a queue-fed worker")
    p.add_argument("--no-span-files", action="store_true", help="do not write span files (spans "
                   "go only to the OTLP endpoint of OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)")
    a = p.parse_args(argv)
    try:
        app = load_app_file(a.app)
    except (LeanstackError, OSError) as e:
        p.error(str(e))
    if a.service not in app.services or app.services[a.service].is_storage:
        p.error(f"'{a.service}' is not a logic service of {app.name}")
    ports = {k: int(v) for k, v in json.loads((a.ports or a.run_dir / "ports.json")
                                               .read_text()).items()}
    hosts = json.loads(a.hosts.read_text()) if a.hosts else None
    otlp_url = traces_endpoint(os.environ)
    if a.no_span_files and otlp_url is None:
        p.error("--no-span-files needs OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (or "
                "OTEL_EXPORTER_OTLP_ENDPOINT) set, or the spans are lost")
    worker = Worker(app, a.service, ports, a.run_dir, a.seed, a.consumers, hosts,
                    otlp_url=otlp_url, span_files=not a.no_span_files)
    asyncio.run(worker.run(a.port, a.admin_port, a.bind))


if __name__ == "__main__":
    main()
