"""The engine on a background thread, fed by asyncio handlers (the HTTP server).

Handlers call :meth:`AsyncEngine.submit` (validated and queued on the engine thread; errors come
back as exceptions) and read :class:`RequestOutput` items from the returned asyncio queue;
:meth:`abort` stops a request. Only the engine thread touches the engine, so no locks are held
during a forward pass. The number of requests in the engine is bounded: beyond ``max_pending``
:class:`Overloaded` is raised instead of queueing without limit.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from leanstack.errors import LeanstackError
from leanstack.llm.engine.engine import Engine, RequestOutput
from leanstack.llm.engine.metrics import EngineMetrics
from leanstack.llm.engine.sampling import SamplingParams


class Overloaded(LeanstackError):
    """Too many requests are already in the engine."""


@dataclass
class _Submit:
    prompt: str | list[int]
    params: SamplingParams
    kv_format: str | None
    request_id: str
    sink: asyncio.Queue
    loop: asyncio.AbstractEventLoop
    done: Future


class AsyncEngine:
    """Runs ``engine.step()`` in a loop on its own thread while there is work."""

    def __init__(self, engine: Engine, max_pending: int = 256,
                 metrics: EngineMetrics | None = None):
        self.engine = engine
        self.max_pending = max_pending
        self.metrics = metrics or EngineMetrics()
        self._commands: queue.Queue = queue.Queue()
        self._sinks: dict[str, tuple[asyncio.Queue, asyncio.AbstractEventLoop]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leanstack-engine", daemon=True)
        self._in_engine = 0
        self._ids = 0
        self._ids_lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._commands.put(None)
        self._thread.join(timeout=30)

    def new_id(self, prefix: str) -> str:
        with self._ids_lock:
            self._ids += 1
            return f"{prefix}-{self._ids}"

    async def submit(self, prompt: str | list[int], params: SamplingParams,
                     kv_format: str | None = None, prefix: str = "cmpl") -> tuple[str, Any, Any]:
        """Queue a request; returns (request id, asyncio queue of RequestOutput, sequence) or
        raises LeanstackError (bad request) / Overloaded."""
        if self._in_engine >= self.max_pending:
            raise Overloaded(f"{self._in_engine} requests are already queued or running: retry "
                             "later")
        loop = asyncio.get_running_loop()
        sink: asyncio.Queue = asyncio.Queue()
        rid = self.new_id(prefix)
        done: Future = Future()
        self._commands.put(_Submit(prompt, params, kv_format, rid, sink, loop, done))
        seq = await asyncio.wrap_future(done)
        return rid, sink, seq

    def abort(self, request_id: str) -> None:
        self._commands.put(("abort", request_id))

    def _apply(self, cmd: Any) -> None:
        if isinstance(cmd, _Submit):
            try:
                seq = self.engine.add_request(cmd.prompt, cmd.params, cmd.request_id,
                                              cmd.kv_format)
            except LeanstackError as e:
                cmd.done.set_exception(e)
                return
            self._sinks[cmd.request_id] = (cmd.sink, cmd.loop)
            self._in_engine += 1
            self.metrics.requests.inc()
            cmd.done.set_result(seq)
        elif isinstance(cmd, tuple) and cmd[0] == "abort" and cmd[1] in self._sinks:
            self.engine.abort(cmd[1])
            self._sinks.pop(cmd[1])
            self._in_engine -= 1
            self.metrics.aborts.inc()

    def _run(self) -> None:
        while not self._stop.is_set():
            block = not self.engine.has_work()
            try:
                cmd = self._commands.get(timeout=1.0) if block else self._commands.get_nowait()
            except queue.Empty:
                cmd = None
            while cmd is not None:
                self._apply(cmd)
                try:
                    cmd = self._commands.get_nowait()
                except queue.Empty:
                    cmd = None
            if self._stop.is_set() or not self.engine.has_work():
                self.metrics.observe_engine(self.engine.stats(), 0, 0.0)
                continue
            start = time.monotonic()
            outputs = self.engine.step()
            self.metrics.observe_engine(self.engine.stats(), len(outputs),
                                        time.monotonic() - start)
            for out in outputs:
                self._deliver(out)

    def _deliver(self, out: RequestOutput) -> None:
        target = self._sinks.get(out.request_id)
        if target is None:
            return
        if out.finished:
            self._sinks.pop(out.request_id)
            self._in_engine -= 1
            self.metrics.observe_finished(out.seq)
        sink, loop = target
        loop.call_soon_threadsafe(sink.put_nowait, out)
