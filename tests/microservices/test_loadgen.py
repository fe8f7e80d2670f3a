"""The open-loop load generator against a real aiohttp server started in the test."""

from __future__ import annotations

import asyncio
import collections
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from aiohttp import web

from leanstack.errors import LeanstackError
from leanstack.microservices.app import SLA
from leanstack.microservices.load import LoadSpec, assign_classes
from leanstack.microservices.loadgen import CLASS_HEADER, LoadGenerator

SLA_50 = SLA(99, 50)


class Server:
    """A real HTTP server on a background thread: optional fixed delay, stalls on demand."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.status = 200
        self.stall_until = 0.0
        self.counts: collections.Counter[str] = collections.Counter()
        self.traceparents: list[str] = []
        self.arrivals: list[float] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stall(self, seconds: float) -> None:
        """Hold every request that arrives in the next ``seconds`` until they are over."""
        self.stall_until = time.monotonic() + seconds

    def close(self) -> None:
        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _handle(self, request: web.Request) -> web.Response:
        self.arrivals.append(time.monotonic())
        self.counts[request.headers.get(CLASS_HEADER, "")] += 1
        self.traceparents.append(request.headers.get("traceparent", ""))
        await request.read()
        wait = max(self.delay_s, self.stall_until - time.monotonic())
        if wait > 0:
            await asyncio.sleep(wait)
        return web.Response(text="ok", status=self.status)

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.SockSite(self.runner, self.sock).start())
        ready.set()
        self.loop.run_forever()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _run(gen: LoadGenerator, n: int) -> list:
    with gen:
        return [gen.next_interval(timeout_s=10) for _ in range(n)]


def test_constant_rate_is_held_and_every_request_is_reported(server):
    load = LoadSpec("constant", rps=200, duration_s=3.0)
    gen = LoadGenerator({"a": server.url()}, load, {"a": 1.0}, {"a": SLA_50}, interval_s=0.5)
    reports = _run(gen, 7)  # one extra interval for the stragglers
    assert [r.index for r in reports] == list(range(7))
    assert [r.t_end for r in reports] == pytest.approx([0.5 * (i + 1) for i in range(7)])
    assert [r.offered_rps for r in reports[:6]] == pytest.approx([200] * 6, abs=2)
    assert reports[6].offered_rps == 0
    done = [r.classes["a"].completed for r in reports]
    assert sum(done) == len(load.arrival_times()) == server.counts["a"] == 600
    assert sum(r.classes["a"].errors for r in reports) == 0
    arrivals = sorted(server.arrivals)  # the rate the server saw: 599 gaps of 5 ms
    assert (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) == pytest.approx(200, rel=0.03)
    for r in reports[1:5]:  # steady state: completions track the schedule
        assert r.classes["a"].throughput_rps == pytest.approx(200, rel=0.25)
    stats = reports[2].classes["a"]
    assert stats.sla_ms == 50 and stats.sla_key == "p99"
    assert set(stats.latency_ms) == {"p50", "p90", "p95", "p99", "p99.9"}
    assert gen.pid is None


def test_class_counts_follow_the_mix_and_headers_are_sent(server):
    mix = {"read": 0.7, "write": 0.2, "login": 0.1}
    load = LoadSpec("poisson", rps=300, duration_s=1.5, seed=3)
    urls = {c: server.url(f"/{c}") for c in mix}
    gen = LoadGenerator(urls, load, mix, {c: SLA_50 for c in mix}, interval_s=0.5)
    reports = _run(gen, 4)
    expected = collections.Counter(assign_classes(mix, len(load.arrival_times()), seed=3))
    assert dict(server.counts) == dict(expected)
    for c in mix:
        assert sum(r.classes[c].completed for r in reports) == expected[c]
    tp = server.traceparents
    assert len(set(tp)) == len(tp)
    assert all(t.startswith("00-") and len(t) == 55 and t.endswith("-01") for t in tp)


@pytest.mark.parametrize("pattern", ["step", "trace"])
def test_time_varying_patterns_are_followed(server, tmp_path, pattern):
    trace = tmp_path / "rates.txt"
    trace.write_text("# per-second rates\n1\n3\n")  # mean 2 -> 50 and 150 rps at rps=100
    load = LoadSpec(pattern, rps=100, duration_s=2.0, amplitude=0.5, trace=str(trace), seed=1)
    gen = LoadGenerator({"a": server.url()}, load, {"a": 1.0}, {"a": SLA_50})
    reports = _run(gen, 3)
    first, second = reports[0].offered_rps, reports[1].offered_rps
    assert first == pytest.approx(50, abs=20) and second == pytest.approx(150, abs=30)
    assert first + second == len(load.arrival_times()) == server.counts["a"]
    assert sum(r.classes["a"].completed for r in reports) == server.counts["a"]


def test_fixed_server_delay_shows_in_p50(server):
    server.delay_s = 0.040
    load = LoadSpec("constant", rps=100, duration_s=2.0)
    gen = LoadGenerator({"a": server.url()}, load, {"a": 1.0}, {"a": SLA_50}, interval_s=1.0)
    _run(gen, 3)
    total = gen.totals()["a"]
    assert total.completed == 200
    assert 40 <= total.latency_ms["p50"] < 60
    assert 40 <= total.latency_ms["p99"] < 250


def test_stall_inflates_requests_scheduled_during_it(server):
    """No coordinated omission: every request scheduled in a 1 s stall is late, not just one."""
    load = LoadSpec("constant", rps=200, duration_s=4.0)
    gen = LoadGenerator({"a": server.url()}, load, {"a": 1.0}, {"a": SLA(99, 200)})
    with gen:
        before = gen.next_interval(timeout_s=10)
        server.stall(1.0)
        after = [gen.next_interval(timeout_s=10) for _ in range(4)]
    assert before.classes["a"].latency_ms["p99"] < 200
    assert not before.classes["a"].violated
    # ~200 requests were scheduled during the stall; they finish together, with lateness spread
    # evenly over 0..1 s, so high percentiles of the interval they land in approach 1 s.
    worst = max(after, key=lambda r: r.classes["a"].latency_ms["p99"]).classes["a"]
    assert worst.latency_ms["p90"] > 500
    assert worst.latency_ms["p99"] > 850
    assert worst.violated
    # Over the whole run, about a quarter of requests (those in the stall) are slower than 100 ms.
    total = gen.totals()["a"]
    assert total.completed == 800
    assert total.latency_ms["p90"] > 300
    assert total.latency_ms["p50"] < 100


def test_lateness_of_a_paused_sender_counts(server):
    """Latency runs from the scheduled send time: requests the sender dispatches late are late."""
    load = LoadSpec("constant", rps=200, duration_s=3.0)
    gen = LoadGenerator({"a": server.url()}, load, {"a": 1.0}, {"a": SLA_50})
    with gen:
        before = gen.next_interval(timeout_s=10)
        os.kill(gen.pid, signal.SIGSTOP)  # the sender falls 0.6 s behind its schedule
        time.sleep(0.6)
        os.kill(gen.pid, signal.SIGCONT)
        after = [gen.next_interval(timeout_s=10) for _ in range(3)]
    assert before.classes["a"].latency_ms["p90"] < 200
    worst = max(r.classes["a"].latency_ms["p90"] for r in after)
    assert worst > 300
    assert gen.totals()["a"].completed == 600


def test_errors_are_counted_when_the_server_goes_down(server):
    load = LoadSpec("constant", rps=100, duration_s=3.0)
    gen = LoadGenerator({"a": server.url()}, load, {"a": 1.0}, {"a": SLA_50}, interval_s=0.5,
                        timeout_s=1.0)
    with gen:
        first = gen.next_interval(timeout_s=10)
        server.close()
        later = [gen.next_interval(timeout_s=10) for _ in range(5)]
    assert first.classes["a"].completed > 25 and first.classes["a"].errors == 0
    tail = later[-3:]
    assert all(r.classes["a"].completed == 0 for r in tail)
    assert sum(r.classes["a"].errors for r in tail) >= 120
    assert all(r.classes["a"].latency_ms["p99"] == 0.0 for r in tail)


@pytest.mark.parametrize("failure", ["timeout", "http-503"])
def test_timeouts_and_error_statuses_count_as_errors(server, failure):
    if failure == "timeout":
        server.delay_s = 2.0
    else:
        server.status = 503
    load = LoadSpec("constant", rps=20, duration_s=1.0)
    gen = LoadGenerator({"a": server.url()}, load, {"a": 1.0}, {"a": SLA_50}, interval_s=0.5,
                        timeout_s=0.3)
    reports = _run(gen, 4)
    assert sum(r.classes["a"].errors for r in reports) == 20
    assert sum(r.classes["a"].completed for r in reports) == 0


def test_no_child_left_after_stop(server):
    gen = LoadGenerator({"a": server.url()}, LoadSpec("constant", rps=50, duration_s=30),
                        {"a": 1.0}, {"a": SLA_50})
    gen.start()
    pid = gen.pid
    assert pid is not None and _alive(pid)
    gen.stop()
    gen.stop()  # idempotent
    assert not _alive(pid)
    with pytest.raises(LeanstackError, match="not running"):
        gen.next_interval()
    with pytest.raises(LeanstackError, match="already started"):
        gen.start()


def test_killed_child_is_a_one_line_error_not_a_hang(server):
    gen = LoadGenerator({"a": server.url()}, LoadSpec("constant", rps=50, duration_s=30),
                        {"a": 1.0}, {"a": SLA_50})
    with gen:
        gen.next_interval(timeout_s=10)
        os.kill(gen.pid, signal.SIGKILL)
        with pytest.raises(LeanstackError, match=r"process exited \(exit code -9") as e:
            for _ in range(3):  # at most one report may already be on its way
                gen.next_interval(timeout_s=10)
        assert "\n" not in str(e.value)


def test_stop_is_clean_while_a_forked_process_holds_the_pipes(server):
    """A tier forked after start() inherits our pipe ends; stop() must not wait for it."""
    gen = LoadGenerator({"a": server.url()}, LoadSpec("constant", rps=50, duration_s=30),
                        {"a": 1.0}, {"a": SLA_50})
    gen.start()
    proc = gen._proc
    holder = multiprocessing.get_context("fork").Process(target=time.sleep, args=(30,))
    holder.start()
    try:
        gen.stop()
    finally:
        holder.kill()
        holder.join()
    assert proc.returncode == 0  # exited on its own, not killed after the stop timeout


def test_child_dies_with_its_parent(server):
    script = textwrap.dedent(f"""
        import time
        from leanstack.microservices.app import SLA
        from leanstack.microservices.load import LoadSpec
        from leanstack.microservices.loadgen import LoadGenerator
        gen = LoadGenerator({{"a": {server.url()!r}}}, LoadSpec("constant", rps=20,
                            duration_s=60), {{"a": 1.0}}, {{"a": SLA(99, 50)}})
        gen.start()
        print(gen.pid, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert _alive(child)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = _alive(child)
    if alive:
        os.kill(child, signal.SIGKILL)
    assert not alive


@pytest.mark.parametrize("urls, mix, slas, match", [
    ({"a": "http://127.0.0.1:1/"}, {"a": 1.0, "b": 1.0}, {"a": SLA_50, "b": SLA_50},
     "no URL for request class 'b'"),
    ({"a": "http://127.0.0.1:1/"}, {"a": 1.0}, {}, "no SLA for request class 'a'"),
    ({"a": "127.0.0.1:1"}, {"a": 1.0}, {"a": SLA_50}, "not an http"),
    ({"a": "http://127.0.0.1:1/"}, {"a": -1.0}, {"a": SLA_50}, "mix weight"),
    ({}, {}, {}, "mix is empty"),
])
def test_bad_configuration_is_one_line_error(urls, mix, slas, match):
    with pytest.raises(LeanstackError, match=match) as e:
        LoadGenerator(urls, LoadSpec(), mix, slas)
    assert "\n" not in str(e.value)


def test_unreachable_target_fails_at_start():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gen = LoadGenerator({"a": f"http://127.0.0.1:{port}/x"}, LoadSpec(), {"a": 1.0},
                        {"a": SLA_50})
    with pytest.raises(LeanstackError, match="cannot reach .* start the app first") as e:
        gen.start()
    assert "\n" not in str(e.value)
    assert gen.pid is None


def test_bad_trace_file_fails_at_start(server, tmp_path):
    trace = tmp_path / "rates.txt"
    trace.write_text("10\nfast\n")
    gen = LoadGenerator({"a": server.url()}, LoadSpec("trace", trace=str(trace)), {"a": 1.0},
                        {"a": SLA_50})
    with pytest.raises(LeanstackError, match="rates.txt:2"):
        gen.start()
    assert gen.pid is None
