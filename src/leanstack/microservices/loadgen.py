"""Open-loop HTTP load generator in its own OS process (like wrk2: no coordinated omission).

The parent (:class:`LoadGenerator`) starts a child Python process and talks to it over pipes: one
JSON line of configuration on the child's stdin, then one JSON line per control interval on its
stdout. Closing the child's stdin stops it; the child also exits when its parent dies (stdin EOF,
or a changed parent PID if some other process inherited the pipe).

The child sends every request at its scheduled time from :meth:`LoadSpec.arrival_times` without
waiting for earlier responses, measures latency from the *scheduled* send time (so a sender that
falls behind, or a server that stalls, shows up in the percentiles), and records successful
requests in per-class HDR histograms bucketed by completion time. A request that times out, fails
to connect or gets an HTTP status >= 400 counts in ``errors`` and not in the histogram.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import random
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import numpy as np
from hdrh.histogram import HdrHistogram

from leanstack.errors import LeanstackError
from leanstack.microservices.app import SLA, percentile_key
from leanstack.microservices.load import LoadSpec, assign_classes
from leanstack.microservices.observation import PERCENTILES, ClassStats

CLASS_HEADER = "x-leanstack-class"
"""Header naming the request class of every request the generator sends."""

_HIST_MAX_US = 3600 * 10**6  # latencies are clamped to one hour
_HIST_DIGITS = 3  # significant digits: 0.1% resolution
_START_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 5.0
_PARENT_CHECK_S = 0.2
_CHILD_CMD = "from leanstack.microservices.loadgen import _child_main; _child_main()"


@dataclass
class IntervalReport:
    """What the generator saw in one control interval, per request class."""

    index: int  # 0, 1, 2, ... control intervals since start
    t_end: float  # seconds since the load started
    offered_rps: float  # requests scheduled in this interval / interval_s
    classes: dict[str, ClassStats]  # sla_ms / sla_key filled from the SLAs given
    send_lag_p99_ms: float = 0.0  # how late the generator itself started requests (p99)


class LoadGenerator:
    """Open-loop HTTP load from a separate OS process (outside every tier cgroup).

    ``urls`` maps request class -> URL that gets a POST per request; ``mix`` gives the class
    weights; ``slas`` fills the SLA fields of the reported :class:`ClassStats` (whose latency
    percentiles are all 0 in an interval where the class completed nothing). Intervals keep
    coming after the schedule ends (with nothing offered) until :meth:`stop`.
    """

    def __init__(self, urls: dict[str, str], load: LoadSpec, mix: dict[str, float],
                 slas: dict[str, SLA], interval_s: float = 1.0, timeout_s: float = 10.0):
        _check_config(urls, mix, slas, interval_s, timeout_s)
        self.urls = {c: urls[c] for c in mix}
        self.load = load
        self.mix = dict(mix)
        self.slas = {c: slas[c] for c in mix}
        self.interval_s = float(interval_s)
        self.timeout_s = float(timeout_s)
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader: threading.Thread | None = None
        self._stopped = False
        self._next_index = 0
        self._totals = {c: _new_histogram() for c in mix}
        self._total_counts = {c: [0, 0] for c in mix}  # completed, errors

    @property
    def pid(self) -> int | None:
        """PID of the child process while it runs, else None."""
        return self._proc.pid if self._proc is not None and not self._stopped else None

    def start(self) -> None:
        """Spawn the child and return once it is sending; interval 0 starts at that moment."""
        if self._proc is not None or self._stopped:
            raise LeanstackError("this LoadGenerator was already started — create a new one "
                                 "for another run")
        if self.load.pattern == "trace":
            self.load.rate(0.0)  # a bad trace file fails here, in the caller's process
        for cls, url in self.urls.items():
            _check_reachable(cls, url, min(2.0, self.timeout_s))
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop)
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        self._proc = subprocess.Popen(
            [sys.executable, "-P", "-c", _CHILD_CMD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._stderr, env=env, close_fds=True,
        )
        self._finalizer = weakref.finalize(self, _kill, self._proc)
        config = {"urls": self.urls, "load": asdict(self.load), "mix": self.mix,
                  "interval_s": self.interval_s, "timeout_s": self.timeout_s}
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps(config).encode() + b"\n")
        self._proc.stdin.flush()
        self._reader = threading.Thread(target=_read_messages,
                                        args=(self._proc.stdout, self._messages),
                                        name="loadgen-reader", daemon=True)
        self._reader.start()
        try:
            msg = self._receive(_START_TIMEOUT_S)
        except LeanstackError:
            self.stop()
            raise
        if msg.get("type") != "started":
            self.stop()
            raise LeanstackError(f"load generator sent {msg.get('type')!r} before starting — "
                                 "this is a bug, please report it")

    def next_interval(self, timeout_s: float | None = None) -> IntervalReport:
        """Block until the next control interval ends and return its report."""
        if self._proc is None or self._stopped:
            raise LeanstackError("the load generator is not running — call start() first")
        msg = self._receive(timeout_s)
        if msg.get("type") != "interval" or msg["index"] != self._next_index:
            raise LeanstackError(f"load generator sent an unexpected message {msg!r} — "
                                 "this is a bug, please report it")
        self._next_index += 1
        classes = {}
        for cls, sla in self.slas.items():
            data = msg["classes"][cls]
            hist = _decode(data.get("hist"))
            self._totals[cls].add(hist)
            self._total_counts[cls][0] += data["completed"]
            self._total_counts[cls][1] += data["errors"]
            classes[cls] = _class_stats(hist, data["completed"], data["errors"],
                                        self.interval_s, sla)
        return IntervalReport(index=msg["index"], t_end=(msg["index"] + 1) * self.interval_s,
                              offered_rps=msg["offered"] / self.interval_s, classes=classes,
                              send_lag_p99_ms=msg["lag_p99_us"] / 1000.0)

    def totals(self) -> dict[str, ClassStats]:
        """Per-class statistics over every interval reported so far (throughput over that span)."""
        span = max(self._next_index, 1) * self.interval_s
        return {cls: _class_stats(self._totals[cls], *self._total_counts[cls], span, sla)
                for cls, sla in self.slas.items()}

    def stop(self) -> None:
        """Stop sending and end the child process; safe to call more than once."""
        if self._stopped:
            return
        self._stopped = True
        if self._proc is None:
            return
        try:  # any byte, or EOF, tells the child to stop (a forked process may hold the pipe)
            if self._proc.stdin is not None:
                self._proc.stdin.write(b"stop\n")
                self._proc.stdin.close()
        except OSError:
            pass
        try:
            self._proc.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._reader is not None:
            self._reader.join(_STOP_TIMEOUT_S)
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
        self._finalizer.detach()

    def __enter__(self) -> LoadGenerator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _receive(self, timeout_s: float | None) -> dict[str, Any]:
        try:
            msg = self._messages.get(timeout=timeout_s)
        except queue.Empty:
            raise LeanstackError(f"no report from the load generator within {timeout_s:g} s — "
                                 "the machine may be overloaded; lower the rate") from None
        if msg is None:
            self._messages.put(None)  # later calls see the same end
            raise LeanstackError(f"the load generator process exited ({self._child_failure()})"
                                 " — see the message, fix it and run again")
        if msg.get("type") == "error":
            raise LeanstackError(msg["message"])
        return msg

    def _child_failure(self) -> str:
        assert self._proc is not None
        try:
            code: int | str = self._proc.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            code = "none yet"
        tail = ""
        if self._stderr is not None:
            self._stderr.seek(0)
            lines = self._stderr.read().decode(errors="replace").strip().splitlines()
            tail = f": {lines[-1]}" if lines else ""
        return f"exit code {code}{tail}"


def _check_config(urls: dict[str, str], mix: dict[str, float], slas: dict[str, SLA],
                  interval_s: float, timeout_s: float) -> None:
    if not mix:
        raise LeanstackError("the request mix is empty — give at least one class with a weight")
    for cls, w in mix.items():
        if not (isinstance(w, int | float) and w > 0 and w < float("inf")):
            raise LeanstackError(f"mix weight of class '{cls}' is {w!r} — use a positive number")
        if cls not in urls:
            raise LeanstackError(f"no URL for request class '{cls}' — add it to urls "
                                 f"(have: {', '.join(urls) or 'none'})")
        if cls not in slas:
            raise LeanstackError(f"no SLA for request class '{cls}' — add it to slas")
        parts = urlsplit(urls[cls])
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise LeanstackError(f"URL {urls[cls]!r} of class '{cls}' is not an http(s) URL — "
                                 "write it as http://HOST:PORT/PATH")
    if not interval_s > 0:
        raise LeanstackError(f"interval_s must be above 0, got {interval_s}")
    if not timeout_s > 0:
        raise LeanstackError(f"timeout_s must be above 0, got {timeout_s}")


def _check_reachable(cls: str, url: str, timeout_s: float) -> None:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout_s).close()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise LeanstackError(f"cannot reach {url} for request class '{cls}' ({reason}) — "
                             "start the app first or fix the URL") from None


def _read_messages(stream: IO[bytes], out: queue.Queue[dict[str, Any] | None]) -> None:
    """Parent-side thread: move the child's JSON lines into a queue; None marks the end."""
    try:
        for line in stream:
            with contextlib.suppress(ValueError):  # not ours: ignore
                out.put(json.loads(line))
    except OSError:
        pass
    out.put(None)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Last resort when a started LoadGenerator is dropped or the interpreter exits."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _new_histogram() -> HdrHistogram:
    return HdrHistogram(1, _HIST_MAX_US, _HIST_DIGITS)


def _decode(encoded: str | None) -> HdrHistogram:
    return HdrHistogram.decode(encoded.encode()) if encoded else _new_histogram()


def _class_stats(hist: HdrHistogram, completed: int, errors: int, span_s: float,
                 sla: SLA) -> ClassStats:
    """Percentiles (ms) from a histogram in µs; all zero when nothing completed."""
    has = hist.get_total_count() > 0
    latency = {percentile_key(p): hist.get_value_at_percentile(p) / 1000.0 if has else 0.0
               for p in PERCENTILES}
    return ClassStats(completed=completed, errors=errors, throughput_rps=completed / span_s,
                      latency_ms=latency, sla_ms=sla.ms, sla_key=sla.key)


# ---------------------------------------------------------------------------------------------
# The child process


def _child_main() -> None:
    """Child entry point: read the config line from stdin, send load, report on stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    sys.setswitchinterval(0.0005)  # let the timer thread take the GIL quickly when it wakes
    out = sys.stdout
    try:
        config = json.loads(sys.stdin.buffer.readline())
        asyncio.run(_Sender(config, out).run())
    except Exception as e:  # reported to the parent as one line
        msg = str(e) if isinstance(e, LeanstackError) else f"{type(e).__name__}: {e}"
        with contextlib.suppress(OSError):  # the parent may be gone
            _emit(out, {"type": "error", "message": msg})


def _emit(out: IO[str], msg: dict[str, Any]) -> None:
    out.write(json.dumps(msg, separators=(",", ":")) + "\n")
    out.flush()


class _Bucket:
    """Completions of one class within one interval."""

    __slots__ = ("hist", "completed", "errors")

    def __init__(self) -> None:
        self.hist = _new_histogram()
        self.completed = 0
        self.errors = 0


class _Sender:
    """The child's event loop work: dispatch on schedule, record, report each interval."""

    def __init__(self, config: dict[str, Any], out: IO[str]) -> None:
        import aiohttp  # only the child needs it

        self.aiohttp = aiohttp
        self.out = out
        self.urls: dict[str, str] = config["urls"]
        self.interval_s: float = config["interval_s"]
        self.timeout_s: float = config["timeout_s"]
        load = LoadSpec(**config["load"])
        self.class_names = list(config["mix"])
        self.times = load.arrival_times()  # arrays, not lists: long runs hold millions
        code = {c: i for i, c in enumerate(self.class_names)}
        self.classes = np.array([code[c] for c in assign_classes(config["mix"], len(self.times),
                                                                 load.seed)], dtype=np.int32)
        self.buckets: dict[int, dict[str, _Bucket]] = {}
        self.open_index = 0  # the earliest interval not yet reported
        self.lag = _new_histogram()  # request start minus scheduled time, this interval
        self.inflight: set[asyncio.Task[None]] = set()
        self.stopping = asyncio.Event()
        self.timer_stop = threading.Event()
        self.t0 = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        parent = os.getppid()
        loop.add_reader(sys.stdin.fileno(), self._on_stdin)
        connector = self.aiohttp.TCPConnector(limit=_connection_limit())
        timeout = self.aiohttp.ClientTimeout(total=self.timeout_s)
        async with self.aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            self.t0 = time.monotonic()
            timer = threading.Thread(target=self._dispatch, args=(loop, session),
                                     name="loadgen-timer", daemon=True)
            timer.start()
            _emit(self.out, {"type": "started"})
            reporter = asyncio.create_task(self._report())
            while not self.stopping.is_set():
                if os.getppid() != parent:  # orphaned: the parent died
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), _PARENT_CHECK_S)
            self.timer_stop.set()
            timer.join()
            for t in [reporter, *self.inflight]:
                t.cancel()
            await asyncio.wait_for(asyncio.gather(reporter, *self.inflight,
                                                  return_exceptions=True), _STOP_TIMEOUT_S)

    def _on_stdin(self) -> None:
        """Anything on stdin is stop(); EOF means the parent is gone."""
        os.read(sys.stdin.fileno(), 4096)
        asyncio.get_running_loop().remove_reader(sys.stdin.fileno())
        self.stopping.set()

    def _dispatch(self, loop: asyncio.AbstractEventLoop, session: Any) -> None:
        """Timer thread: start every request at its scheduled time, never waiting for responses.

        A thread sleeping in the kernel wakes within ~0.1 ms; the event loop's own timers round
        up to whole milliseconds, which would add about 1 ms of lateness to every request.
        """
        times, n, i = self.times, len(self.times), 0
        while i < n and not self.timer_stop.is_set():
            delay = self.t0 + float(times[i]) - time.monotonic()
            if delay > 0:
                self.timer_stop.wait(delay)
                continue
            due = int(np.searchsorted(times, time.monotonic() - self.t0, side="right"))
            loop.call_soon_threadsafe(self._start_requests, session, i, due)
            i = due

    def _start_requests(self, session: Any, first: int, end: int) -> None:
        for k in range(first, end):
            task = asyncio.create_task(self._request(session, k))
            self.inflight.add(task)
            task.add_done_callback(self.inflight.discard)

    async def _request(self, session: Any, k: int) -> None:
        cls = self.class_names[self.classes[k]]
        scheduled = self.t0 + float(self.times[k])
        self.lag.record_value(_micros(time.monotonic() - scheduled))
        headers = {CLASS_HEADER: cls, "content-type": "application/json",
                   "traceparent": f"00-{random.getrandbits(128):032x}-"
                                  f"{random.getrandbits(64):016x}-01"}
        try:
            async with session.post(self.urls[cls], data=b"{}", headers=headers) as resp:
                await resp.read()
                ok = resp.status < 400
        except Exception:  # refused, reset, timed out, malformed: all count as errors
            ok = False
        done = time.monotonic()
        index = max(int((done - self.t0) / self.interval_s), self.open_index)
        bucket = self.buckets.get(index)
        if bucket is None:
            bucket = self.buckets[index] = {c: _Bucket() for c in self.class_names}
        b = bucket[cls]
        if ok:
            b.completed += 1
            b.hist.record_value(_micros(done - scheduled))
        else:
            b.errors += 1

    async def _report(self) -> None:
        """At each interval boundary, ship that interval's buckets to the parent."""
        while True:
            end = self.t0 + (self.open_index + 1) * self.interval_s
            await asyncio.sleep(max(end - time.monotonic(), 0.0))
            k = self.open_index
            self.open_index += 1
            bucket = self.buckets.pop(k, None) or {}
            lo = k * self.interval_s
            offered = int(np.searchsorted(self.times, lo + self.interval_s)
                          - np.searchsorted(self.times, lo))
            classes = {}
            for c in self.class_names:
                b = bucket.get(c)
                if b is None:
                    classes[c] = {"completed": 0, "errors": 0}
                    continue
                enc = b.hist.encode().decode() if b.completed else None
                classes[c] = {"completed": b.completed, "errors": b.errors, "hist": enc}
            lag_p99 = self.lag.get_value_at_percentile(99) if self.lag.get_total_count() else 0
            self.lag = _new_histogram()
            _emit(self.out, {"type": "interval", "index": k, "offered": offered,
                             "lag_p99_us": lag_p99, "classes": classes})


def _micros(seconds: float) -> int:
    """A latency in whole microseconds, clamped to the histograms' range."""
    return min(max(int(seconds * 1e6), 1), _HIST_MAX_US)


def _connection_limit() -> int:
    """As many concurrent connections as open files allow (raised to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 65536 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return max(64, min(soft - 64, 10000))


__all__ = ["CLASS_HEADER", "IntervalReport", "LoadGenerator"]
