"""The simulator backend: queueing theory, CPU quotas, call structure, determinism, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from leanstack.errors import LeanstackError
from leanstack.microservices.app import load_app, parse_app
from leanstack.microservices.load import LoadSpec
from leanstack.microservices.observation import PERCENTILES, Allocation, Observation, Span
from leanstack.microservices.sim import (
    CARRY_S,
    OVERRUN_S,
    REPLICA_START_S,
    RQ_KEEP_S,
    SLICE_S,
    SimBackend,
    _Tier,
)

NO_RPC = {"version": 1, "rpc": {"callee_ms": 0.0, "caller_ms": 0.0, "storage_caller_ms": 0.0},
          "endpoints": {}, "storage": {}}


def one_tier(cpu_ms: float, cv: float, replicas: int = 1, max_cpu: float = 1.0):
    return parse_app({
        "name": "one",
        "services": {"svc": {"replicas": replicas, "max_cpu": max_cpu,
                             "endpoints": {"run": {"cpu_ms": cpu_ms, "cv": cv}}}},
        "classes": {"req": {"entry": "svc.run", "weight": 1, "sla": {"percentile": 99,
                                                                      "ms": 100}}},
    })


def fan_app(groups: list[list[str]]):
    """front -> a.x (10 ms) and b.x (10 ms), grouped as ``groups``; no other work."""
    return parse_app({
        "name": "fan",
        "services": {
            "front": {"endpoints": {"in": {"cpu_ms": 0.0, "cv": 0.0, "calls": groups}}},
            "a": {"endpoints": {"x": {"cpu_ms": 10.0, "cv": 0.0}}},
            "b": {"endpoints": {"x": {"cpu_ms": 10.0, "cv": 0.0}}},
        },
        "classes": {"req": {"entry": "front.in", "weight": 1, "sla": {"percentile": 99,
                                                                       "ms": 100}}},
    })


def pipeline_app():
    """upload (1 ms) -> queue -> stage1 (5 ms) -> queue -> stage2 (7 ms); all deterministic."""
    return parse_app({
        "name": "pipe",
        "services": {
            "upload": {"endpoints": {
                "ingest": {"cpu_ms": 1.0, "cv": 0.0, "enqueue": ["stage1.run"]},
                "peek": {"cpu_ms": 1.0, "cv": 0.0, "enqueue": ["stage1.run"]}}},
            "stage1": {"queue": "q", "endpoints": {
                "run": {"cpu_ms": 5.0, "cv": 0.0, "enqueue": ["stage2.run"]}}},
            "stage2": {"queue": "q", "endpoints": {"run": {"cpu_ms": 7.0, "cv": 0.0}}},
            "q": {"kind": "redis", "op_cpu_ms": 0.0},
        },
        "classes": {
            "process": {"entry": "upload.ingest", "weight": 1, "wait": "pipeline",
                        "sla": {"percentile": 99, "ms": 100}},
            "ack": {"entry": "upload.peek", "weight": 1, "sla": {"percentile": 99, "ms": 100}},
        },
    })


def two_tiers():
    """Classes ``a`` and ``b`` on tiers ``a`` and ``b``: 5 ms of deterministic work each."""
    return parse_app({
        "name": "two",
        "services": {n: {"endpoints": {"x": {"cpu_ms": 5.0, "cv": 0.0}}} for n in "ab"},
        "classes": {n: {"entry": f"{n}.x", "weight": 1, "sla": {"percentile": 99, "ms": 100}}
                    for n in "ab"},
    })


def storage_app(kind: str, client: str = "async"):
    """``front.get`` calls ``[[cache.get, store.get]]`` (10 ms each); ``front.ping`` calls
    nothing (1 ms). ``cache`` is a ``kind`` server with a ``client`` client, ``store`` a redis
    server."""
    return parse_app({
        "name": "store",
        "services": {
            "front": {"endpoints": {"get": {"cpu_ms": 0.0, "cv": 0.0,
                                            "calls": [["cache.get", "store.get"]]},
                                    "ping": {"cpu_ms": 1.0, "cv": 0.0}}},
            "cache": {"kind": kind, "op_cpu_ms": 10.0, "client": client},
            "store": {"kind": "redis", "op_cpu_ms": 10.0},
        },
        "classes": {
            "get": {"entry": "front.get", "weight": 1, "sla": {"percentile": 99, "ms": 100}},
            "ping": {"entry": "front.ping", "weight": 1, "sla": {"percentile": 99, "ms": 100}},
        },
    })


def run(app, load: LoadSpec, allocation: Allocation | None = None, interval_s: float = 1.0,
        seed: int = 0, calibration=None, record_spans: bool = False,
        intervals: int | None = None,
        host_cores: float | None = None,
        run_queues: bool = False) -> tuple[SimBackend, list[Observation]]:
    if calibration is not None and isinstance(calibration, dict):
        calibration = {**calibration, "app": app.name}
    sim = SimBackend(interval_s=interval_s, seed=seed, calibration=calibration,
                     record_spans=record_spans, host_cores=host_cores, run_queues=run_queues)
    sim.deploy(app, allocation or Allocation.static_max(app))
    sim.start(load)
    n = intervals if intervals is not None else math.ceil(load.duration_s / interval_s)
    obs = [sim.observe() for _ in range(n)]
    return sim, obs


def test_mm1_matches_queueing_theory():
    lam, mu = 100.0, 200.0  # requests/s, exponential service of 5 ms at one core
    app = one_tier(cpu_ms=1e3 / mu, cv=1.0)
    sim, obs = run(app, LoadSpec("poisson", rps=lam, duration_s=300, seed=3), interval_s=300,
                   calibration=NO_RPC, record_spans=True)
    durations = np.array([s.duration_ms for s in sim.spans()])
    assert durations.size > 25000
    expected_mean_ms = 1e3 / (mu - lam)  # M/M/1 sojourn time: exponential with rate mu - lam
    assert durations.mean() == pytest.approx(expected_mean_ms, rel=0.07)
    lat = obs[0].classes["req"].latency_ms
    assert lat["p50"] == pytest.approx(expected_mean_ms * math.log(2), rel=0.08)
    assert lat["p99"] == pytest.approx(expected_mean_ms * math.log(100), rel=0.1)
    assert obs[0].tiers["svc"].cpu_used == pytest.approx(lam / mu, rel=0.03)


def test_halving_cpu_raises_latency_and_throttles():
    app = one_tier(cpu_ms=5.0, cv=1.0)
    load = LoadSpec("poisson", rps=60, duration_s=60, seed=1)
    _, full = run(app, load, interval_s=60)
    _, half = run(app, load, Allocation.static_max(app).with_tier("svc", cpu=0.5), interval_s=60)
    # A CFS quota slows a single-threaded replica only once its bucket runs dry: the median
    # moves a little, the tail a lot.
    half_lat, full_lat = half[0].classes["req"].latency_ms, full[0].classes["req"].latency_ms
    assert half_lat["p50"] > 1.05 * full_lat["p50"]
    assert half_lat["p99"] > 2.0 * full_lat["p99"]
    assert full[0].tiers["svc"].throttled_periods == 0
    assert half[0].tiers["svc"].throttled_periods > 0
    assert half[0].tiers["svc"].cpu_limit == 0.5


def cfs_reference_ms(start: float, work: float, quota: float, phase: float,
                     step: float = 1e-5) -> float:
    """Brute-force CFS bandwidth in 10 us steps: a full bucket (quota + CARRY_S) at ``start``;
    the task runs while the bucket is positive and, once it empties mid-run, OVERRUN_S more;
    periods of 100 ms end at ``phase + k * 100 ms`` and refill the bucket up to quota +
    CARRY_S."""
    t, left, running = start, quota + CARRY_S, True
    boundary = phase + math.ceil((start - phase) / 0.1 + 1e-9) * 0.1
    while work > 1e-9:
        if t >= boundary - 1e-12:
            boundary += 0.1
            left = min(left + quota, quota + CARRY_S)
            running = left > 0
        if running and left > -OVERRUN_S + 1e-12:
            work -= step
            left -= step
        else:
            running = False
        t += step
    return (t - start) * 1e3


def test_quota_bucket_throttles_like_cfs_with_tick_overrun():
    # 80 ms segments under a 50 ms-per-100 ms quota, one every 500 ms: each is throttled once
    # or twice, the way a brute-force reference of the kernel's rule says.
    assert (OVERRUN_S, CARRY_S) == (0.002, 0.001)
    app = one_tier(cpu_ms=80.0, cv=0.0)
    alloc = Allocation.static_max(app).with_tier("svc", cpu=0.5)
    sim, obs = run(app, LoadSpec("constant", rps=2, duration_s=10), alloc, calibration=NO_RPC)
    phase = sim.period_phases["svc"]
    assert 0 < phase <= 0.1
    expected = cfs_reference_ms(0.0, 0.08, 0.05, phase)
    assert 80.0 + 20.0 < expected < 80.0 + 100.0
    for o in obs:
        ts = o.tiers["svc"]
        assert o.classes["req"].latency_ms["p50"] == pytest.approx(expected, abs=0.05)
        assert ts.throttled_periods >= 2
        assert ts.throttled_s == pytest.approx(2 * (expected - 80.0) / 1e3, abs=1e-4)
        assert ts.cpu_used == pytest.approx(0.16, abs=1e-9)
    _, unthrottled = run(app, LoadSpec("constant", rps=2, duration_s=10), calibration=NO_RPC)
    assert unthrottled[3].classes["req"].latency_ms["p99"] == pytest.approx(80.0, abs=1e-6)
    assert unthrottled[3].tiers["svc"].throttled_periods == 0


def cfs_run_queue_reference_ms(starts: list[float], work: float, quota: float, phase: float,
                     step: float = 1e-5) -> list[float]:
    """Brute-force CFS bandwidth in 10 us steps, one run queue: segments of ``work`` seconds
    arrive at ``starts`` (each done before the next); periods of 100 ms end at
    ``phase + k * 100 ms`` and refill the pool up to ``quota``. A task runs on its slice; the
    kernel notices the slice is used up OVERRUN_S later (at a tick) and takes a new one from
    the pool, up to SLICE_S beyond the debt; when that leaves no runtime the task is throttled
    until a refill. A sleeping task's run queue repays its debt and keeps RQ_KEEP_S. Returns
    each segment's latency in ms."""
    state = {"pool": quota, "local": 0.0}

    def take() -> None:
        amount = min(state["pool"], SLICE_S - state["local"])
        state["pool"] -= amount
        state["local"] += amount

    latencies, boundary = [], phase
    for start in starts:
        while boundary <= start + 1e-12:
            state["pool"] = min(state["pool"] + quota, quota)
            boundary += 0.1
        t, left, over = start, work, 0.0
        if state["local"] <= 1e-12:
            take()
        armed = state["local"] > 1e-12
        while left > 1e-9:
            if t >= boundary - 1e-12:
                state["pool"] = min(state["pool"] + quota, quota)
                boundary += 0.1
                if not armed:  # throttled: the refill lets it run again
                    take()
                    armed = state["local"] > 1e-12
            if state["local"] > 1e-12 or (armed and over < OVERRUN_S - 1e-12):
                over = over + step if state["local"] <= 1e-12 else 0.0
                state["local"] -= step
                left -= step
            elif armed:  # the tick notices the used-up slice
                take()
                armed, over = state["local"] > 1e-12, 0.0
                continue
            t += step
        latencies.append((t - start) * 1e3)
        if state["local"] < 0:
            take()
        if state["local"] > RQ_KEEP_S:
            state["pool"] += state["local"] - RQ_KEEP_S
            state["local"] = RQ_KEEP_S
    return latencies


def test_run_queues_throttle_like_cfs_bandwidth_with_slices_and_tick_overrun():
    # As above with run queues: each slice overrun by a tick is a debt the next slice repays,
    # and the pool's last bit may not cover it, so a segment runs 52 ms before it is
    # throttled, where one bucket lets it run 53 (quota + CARRY_S + one overrun).
    assert (OVERRUN_S, SLICE_S, RQ_KEEP_S) == (0.002, 0.005, 0.001)
    app = one_tier(cpu_ms=80.0, cv=0.0)
    alloc = Allocation.static_max(app).with_tier("svc", cpu=0.5)
    sim, obs = run(app, LoadSpec("constant", rps=2, duration_s=10), alloc, calibration=NO_RPC,
                   host_cores=1, run_queues=True)
    phase = sim.period_phases["svc"]
    assert 0 < phase <= 0.1
    expected = cfs_run_queue_reference_ms([0.5 * k for k in range(20)], 0.08, 0.05, phase)
    assert all(80.0 + 20.0 < e < 80.0 + 100.0 for e in expected)
    for i, o in enumerate(obs):
        ts, pair = o.tiers["svc"], expected[2 * i:2 * i + 2]
        assert o.classes["req"].latency_ms["p50"] == pytest.approx(np.mean(pair), abs=0.05)
        assert ts.throttled_periods >= 2
        assert ts.throttled_s == pytest.approx(sum(e - 80.0 for e in pair) / 1e3, abs=1e-4)
        assert ts.cpu_used == pytest.approx(0.16, abs=1e-9)
    _, unthrottled = run(app, LoadSpec("constant", rps=2, duration_s=10), calibration=NO_RPC)
    assert unthrottled[3].classes["req"].latency_ms["p99"] == pytest.approx(80.0, abs=1e-6)
    assert unthrottled[3].tiers["svc"].throttled_periods == 0


def test_runtime_kept_on_one_core_is_stranded_while_the_process_runs_on_another():
    # 5 ms of quota: a 1 ms segment on core 0 takes it all as a slice, then its sleeping run
    # queue keeps 1 ms and hands 3 back. A 6 ms segment in the same period finishes on core 0
    # (the 1 ms kept and the pool's 3 ms, each slice overrun by a tick's 2 ms, a debt left for
    # later) but on core 1 it has only the pool's 3 ms and one overrun: throttled to the
    # period's end.
    def tier_after_a_short_segment() -> _Tier:
        tier = _Tier("svc", "logic", False)
        tier.local, tier.carry = [0.0, 0.0], 0.0
        tier.set_cpu(0.05, 1)
        tier.period_end = 0.1
        assert tier.reserve_on_core(0.0, 0.001, 0) == pytest.approx(0.001)
        tier.sleep(0.001, 0)
        assert (tier.local[0], tier.q_left) == pytest.approx((RQ_KEEP_S, 0.003))
        return tier

    same_core = tier_after_a_short_segment()
    assert same_core.reserve_on_core(0.01, 0.006, 0) == pytest.approx(0.016)
    assert same_core.thr_periods == 0
    other_core = tier_after_a_short_segment()
    end = other_core.reserve_on_core(0.01, 0.006, 1)
    assert end == pytest.approx(0.1 + 0.001)  # 5 ms before the throttle, 1 ms after the refill
    assert other_core.thr_periods == 1
    assert other_core.local[0] == pytest.approx(RQ_KEEP_S)  # still stranded on core 0


def test_run_queues_need_the_host_model():
    app = one_tier(cpu_ms=1.0, cv=0.0)
    with pytest.raises(LeanstackError, match="run_queues needs the host model"):
        SimBackend(run_queues=True, host_cores=math.inf).deploy(app, Allocation.static_max(app))



def test_a_tier_calibrated_below_its_callee_overhead_takes_the_rest_off_its_answers():
    # front: no work, 0.5 ms to be called, 1.0 ms per answer from a and b, and a calibrated
    # extra of -1.5 ms per visit: 1.0 ms per visit in all (not 2.0 with the extra cut at 0).
    calibration = {"version": 1, "endpoints": {}, "storage": {},
                   "rpc": {"callee_ms": 0.5, "caller_ms": 1.0, "storage_caller_ms": 0.0},
                   "tiers": {"front": {"extra_ms": -1.5}}}
    app = fan_app([["a.x", "b.x"]])
    _, obs = run(app, LoadSpec("constant", rps=50, duration_s=5), calibration=calibration)
    assert obs[-1].tiers["front"].cpu_used == pytest.approx(50 * 1.0e-3, rel=0.02)
    assert obs[-1].tiers["a"].cpu_used == pytest.approx(50 * 10.5e-3, rel=0.02)
    calibration["tiers"]["front"]["extra_ms"] = -0.25  # the start segment absorbs it
    _, obs = run(app, LoadSpec("constant", rps=50, duration_s=5), calibration=calibration)
    assert obs[-1].tiers["front"].cpu_used == pytest.approx(50 * 2.25e-3, rel=0.02)

def test_tiers_get_different_period_phases_from_the_seed():
    app = two_tiers()
    a, b = SimBackend(seed=1), SimBackend(seed=2)
    for sim in (a, b):
        sim.deploy(app, Allocation.static_max(app))
    assert a.period_phases["a"] != a.period_phases["b"]
    assert a.period_phases != b.period_phases


def test_replicas_share_the_tier_quota():
    app = one_tier(cpu_ms=5.0, cv=1.0, replicas=3, max_cpu=3.0)
    alloc = Allocation.static_max(app).with_tier("svc", cpu=0.8)
    _, obs = run(app, LoadSpec("poisson", rps=400, duration_s=5), alloc)  # demand ~2 cores
    for o in obs[1:]:
        assert o.tiers["svc"].cpu_used <= 0.8 * 1.05
        assert o.tiers["svc"].throttled_periods >= 9
        assert o.tiers["svc"].replicas == 3
    _, roomy = run(app, LoadSpec("poisson", rps=400, duration_s=5))
    assert roomy[2].tiers["svc"].cpu_used > 1.5


def mean_latency_ms(sim: SimBackend) -> float:
    return float(np.mean([s.duration_ms for s in sim.spans()]))


def test_tiers_share_the_host_cores_like_one_md1_queue():
    # Two tiers, 90 req/s each of 5 ms: 0.45 core apiece, 0.9 together. Apart, each is an
    # M/D/1 queue at rho 0.45; on one shared core they are one M/D/1 queue at rho 0.9.
    # Pollaczek-Khinchine: W = S + lam S^2 / (2 (1 - rho)).
    app, load = two_tiers(), LoadSpec("poisson", rps=180, duration_s=200, seed=2)
    sim, _ = run(app, load, interval_s=200, calibration=NO_RPC, record_spans=True, host_cores=1)
    assert mean_latency_ms(sim) == pytest.approx(5 + 180 * 25e-3 / (2 * 0.1), rel=0.12)
    apart, _ = run(app, load, interval_s=200, calibration=NO_RPC, record_spans=True)
    assert mean_latency_ms(apart) == pytest.approx(5 + 90 * 25e-3 / (2 * 0.55), rel=0.05)
    two, _ = run(app, load, interval_s=200, calibration=NO_RPC, record_spans=True,
                 host_cores=2)  # a core per replica: the host never binds
    assert mean_latency_ms(two) == mean_latency_ms(apart)


def test_fractional_host_cores_slow_segments_but_not_their_cpu():
    app = one_tier(cpu_ms=5.0, cv=0.0)
    load = LoadSpec("constant", rps=10, duration_s=5)
    _, obs = run(app, load, calibration=NO_RPC, host_cores=0.5)
    assert obs[2].classes["req"].latency_ms["p50"] == pytest.approx(10.0, abs=1e-6)
    assert obs[2].tiers["svc"].cpu_used == pytest.approx(0.05, abs=1e-9)


def test_a_throttled_segment_frees_its_host_core():
    # Tier a is squeezed to 0.1 core and spends most of each period throttled; tier b must
    # not wait for those throttled segments on the one host core.
    app = two_tiers()
    alloc = Allocation.static_max(app).with_tier("a", cpu=0.1)
    load = LoadSpec("constant", rps=40, duration_s=10)
    _, obs = run(app, load, alloc, calibration=NO_RPC, host_cores=1)
    assert sum(o.tiers["a"].throttled_periods for o in obs) > 20
    assert obs[5].classes["b"].latency_ms["p99"] < 11.0  # at most one 5 ms segment ahead


def test_calibrated_host_cores_apply_unless_overridden():
    app, load = two_tiers(), LoadSpec("poisson", rps=160, duration_s=20, seed=4)
    calib = {**NO_RPC, "host_cores": 1}
    _, from_calib = run(app, load, interval_s=20, calibration=calib)
    _, explicit = run(app, load, interval_s=20, calibration=NO_RPC, host_cores=1)
    _, unlimited = run(app, load, interval_s=20, calibration=calib, host_cores=math.inf)
    p99 = [o[0].classes["a"].latency_ms["p99"] for o in (from_calib, explicit, unlimited)]
    assert p99[0] == p99[1]
    assert p99[2] < 0.5 * p99[0]
    with pytest.raises(LeanstackError, match="host_cores must be above 0"):
        SimBackend(host_cores=0)


def test_blocking_client_calls_block_the_caller_and_run_one_by_one():
    ten_ms = {"dist": "constant", "mean_ms": 10.0, "cv": 0.0}
    calib = {**NO_RPC, "storage": {"cache.get": ten_ms, "store.get": ten_ms}}
    load = LoadSpec("constant", rps=4, duration_s=5)
    _, mc = run(storage_app("memcached", "blocking"), load, calibration=calib)
    _, rd = run(storage_app("memcached"), load, calibration=calib)
    # the blocking get finishes before the redis get is sent; asynchronous gets overlap
    assert mc[3].classes["get"].latency_ms["p50"] == pytest.approx(20.0, abs=1e-6)
    assert rd[3].classes["get"].latency_ms["p50"] == pytest.approx(10.0, abs=1e-6)
    busy = LoadSpec("poisson", rps=40, duration_s=20, seed=5)
    _, mc = run(storage_app("memcached", "blocking"), busy, interval_s=20, calibration=calib)
    _, rd = run(storage_app("memcached"), busy, interval_s=20, calibration=calib)
    # a ping that lands while front waits on a blocking client waits too; otherwise not
    assert rd[0].classes["ping"].latency_ms["p99"] < 3.0  # at most behind another ping
    assert mc[0].classes["ping"].latency_ms["p99"] > 5.0


def test_parallel_fan_out_takes_the_max_not_the_sum():
    load = LoadSpec("constant", rps=5, duration_s=4)
    _, par = run(fan_app([["a.x", "b.x"]]), load, calibration=NO_RPC)
    _, seq = run(fan_app([["a.x"], ["b.x"]]), load, calibration=NO_RPC)
    assert par[1].classes["req"].latency_ms["p99"] == pytest.approx(10.0, abs=1e-6)
    assert seq[1].classes["req"].latency_ms["p99"] == pytest.approx(20.0, abs=1e-6)


def test_rpc_overheads_are_charged_at_caller_and_callee():
    rpc = {"callee_ms": 0.5, "caller_ms": 0.25, "storage_caller_ms": 0.0}
    _, obs = run(fan_app([["a.x"], ["b.x"]]), LoadSpec("constant", rps=5, duration_s=3),
                 calibration={**NO_RPC, "rpc": rpc})
    # front: 0.5 in + 2 x 0.25 answers; a, b: 0.5 in + 10 each
    assert obs[1].classes["req"].latency_ms["p50"] == pytest.approx(22.0, abs=1e-6)
    assert obs[1].tiers["front"].cpu_used == pytest.approx(5 * 1.0e-3, rel=1e-6)


def test_every_call_and_the_entry_take_the_rpc_delay_without_cpu():
    rpc = {"callee_ms": 0.0, "caller_ms": 0.0, "storage_caller_ms": 0.0, "delay_ms": 1.5}
    _, obs = run(fan_app([["a.x"], ["b.x"]]), LoadSpec("constant", rps=5, duration_s=3),
                 calibration={**NO_RPC, "rpc": rpc})
    # the load generator -> front, front -> a, front -> b: three delays on the path
    assert obs[1].classes["req"].latency_ms["p50"] == pytest.approx(24.5, abs=1e-6)
    assert obs[1].tiers["a"].cpu_used == pytest.approx(5 * 10e-3, rel=1e-6)


def test_async_pipeline_completes_through_every_stage():
    app = pipeline_app()
    sim, obs = run(app, LoadSpec("constant", rps=10, duration_s=5), calibration=NO_RPC,
                   intervals=6, record_spans=True)
    done = sum(o.classes["process"].completed for o in obs)
    acked = sum(o.classes["ack"].completed for o in obs)
    assert done + acked == 50
    assert obs[2].classes["process"].latency_ms["p50"] == pytest.approx(13.0, abs=1e-6)
    assert obs[2].classes["ack"].latency_ms["p50"] == pytest.approx(1.0, abs=1e-6)
    assert sum(o.tiers["stage2"].rps for o in obs) == 50  # every message reached the last stage
    assert sum(o.tiers["q"].rps for o in obs) == 100  # one push per enqueue edge
    spans = sim.spans()
    by_id = {s.span_id: s for s in spans}
    stage2 = [s for s in spans if s.service == "stage2"]
    assert len(stage2) == 50
    for s in stage2:  # linked to its producer, as the workers' traces are
        producer = by_id[s.parent_span_id]
        assert producer.service == "stage1" and producer.trace_id == s.trace_id
        assert s.start_ns > producer.start_ns and s.attributes["leanstack.queue_ms"] >= 0


def test_consumers_pull_one_message_at_a_time():
    app = pipeline_app()
    # 100 rps x 7 ms = 0.7 core of stage2 work, but the queue is fed at 10 ms spacing by stage1's
    # 5 ms consumer: with one consumer each, the backlog stays small; squeeze stage2 to see it.
    alloc = Allocation.static_max(app).with_tier("stage2", cpu=0.3)
    _, obs = run(app, LoadSpec("constant", rps=50, duration_s=4), alloc, calibration=NO_RPC)
    ack = [o.classes["ack"].latency_ms["p99"] for o in obs]
    proc = [o.classes["process"].latency_ms.get("p99", 0.0) for o in obs]
    assert max(ack) < 2.0  # the producer never waits for consumers
    assert proc[-1] > 3 * proc[0] > 0  # stage2 (0.35 core of demand on 0.3) falls behind
    assert obs[-1].tiers["stage2"].inflight == pytest.approx(1.0, abs=0.01)


def test_more_consumer_replicas_drain_a_queue():
    app = pipeline_app()
    load = LoadSpec("constant", rps=200, duration_s=3)  # stage2: 1.4 cores of demand
    one = Allocation.static_max(app).with_tier("stage2", cpu=2.0)
    _, slow = run(app, load, one, calibration=NO_RPC)
    _, fast = run(app, load, one.with_tier("stage2", replicas=2), calibration=NO_RPC)
    assert slow[-1].tiers["stage2"].cpu_used == pytest.approx(1.0, abs=0.01)  # one consumer
    assert fast[-1].tiers["stage2"].cpu_used == pytest.approx(1.4, rel=0.05)
    assert fast[-1].classes["process"].latency_ms["p99"] < 20.0
    assert slow[-1].classes["process"].latency_ms["p99"] > 500.0


def test_requests_past_the_timeout_count_as_errors():
    app = one_tier(cpu_ms=100.0, cv=0.0)  # 2 cores of demand on one single-threaded replica
    _, obs = run(app, LoadSpec("constant", rps=20, duration_s=30), calibration=NO_RPC)
    assert obs[5].classes["req"].errors == 0
    late = obs[-1].classes["req"]
    assert late.errors == 10 and late.completed == 0  # served 10/s, every one > TIMEOUT_S late
    assert late.latency_ms == {}


def test_same_seed_same_results_and_other_seed_differs():
    app = load_app("social-network")
    load = LoadSpec("poisson", rps=300, duration_s=5, seed=4)
    a = [o.to_dict() for o in run(app, load, seed=7)[1]]
    b = [o.to_dict() for o in run(app, load, seed=7)[1]]
    c = [o.to_dict() for o in run(app, load, seed=8)[1]]
    assert a == b
    assert a != c


def test_observation_has_every_field_the_local_backend_reports():
    app = load_app("social-network")
    _, obs = run(app, LoadSpec("poisson", rps=300, duration_s=3))
    o = obs[-1]
    assert o.t == 3.0 and o.interval_s == 1.0
    assert o.offered_rps == pytest.approx(300, rel=0.2)
    assert o.cfs_period_ms == 100.0  # the period of the modelled quota buckets
    assert set(o.tiers) == set(app.services)
    assert set(o.classes) == set(app.classes)
    keys = {f"p{p:g}" for p in PERCENTILES}
    for name, cs in o.classes.items():
        assert set(cs.latency_ms) == keys
        assert cs.sla_ms == app.classes[name].sla.ms and cs.sla_key == "p99"
        assert cs.throughput_rps == cs.completed > 0
    for name, ts in o.tiers.items():
        assert ts.cpu_limit == app.services[name].max_cpu
        assert 0 < ts.cpu_used < ts.cpu_limit
        assert ts.memory_bytes > 0 and ts.rps > 0 and ts.inflight > 0
        assert set(ts.latency_ms) == keys
    assert Observation.from_dict(o.to_dict()) == o


def test_new_replica_joins_after_start_delay():
    app = one_tier(cpu_ms=5.0, cv=1.0, replicas=1, max_cpu=4.0)
    sim = SimBackend(interval_s=1.0)
    sim.deploy(app, Allocation.static_max(app))
    sim.start(LoadSpec("poisson", rps=300, duration_s=8))  # 1.5 cores of demand
    first = sim.observe()
    assert first.tiers["svc"].cpu_used <= 1.0 + 1e-9  # one single-threaded replica
    sim.set_allocation(Allocation.static_max(app).with_tier("svc", replicas=3))
    assert REPLICA_START_S < 1.0
    later = [sim.observe() for _ in range(4)]
    assert later[0].tiers["svc"].replicas == 3
    assert later[0].tiers["svc"].cpu_used > 1.2  # the new replicas drain the backlog
    # the first replica's own backlog drains at its share of the load; then the tail is short
    assert later[-1].classes["req"].latency_ms["p99"] < first.classes["req"].latency_ms["p99"] / 5
    sim.set_allocation(Allocation.static_max(app).with_tier("svc", replicas=1))
    assert sim.observe().tiers["svc"].replicas == 1


def test_spans_record_class_cpu_and_parents():
    app = load_app("social-network")
    sim, _ = run(app, LoadSpec("poisson", rps=100, duration_s=2), record_spans=True)
    spans = sim.spans()
    by_id = {s.span_id: s for s in spans}
    roots = [s for s in spans if not s.parent_span_id]
    assert roots and all(s.service == "nginx" for s in roots)
    for s in spans:
        assert s.attributes["leanstack.class"] in app.classes
        if s.parent_span_id:
            parent = by_id[s.parent_span_id]
            assert parent.trace_id == s.trace_id
            assert parent.start_ns <= s.start_ns <= s.end_ns <= parent.end_ns
        if not app.services[s.service].is_storage:
            assert s.attributes["leanstack.cpu_ms"] > 0
    assert Span.from_otlp(spans[0].to_otlp()) == spans[0]
    later = sim.spans(since_ns=1_000_000_000)
    assert 0 < len(later) < len(spans)


def test_bad_use_gives_one_line_errors():
    app = one_tier(cpu_ms=1.0, cv=0.5)
    sim = SimBackend()
    with pytest.raises(LeanstackError, match="deploy"):
        sim.start(LoadSpec())
    sim.deploy(app, Allocation.static_max(app))
    with pytest.raises(LeanstackError, match="start"):
        sim.observe()
    with pytest.raises(LeanstackError, match="unknown tier 'nope'"):
        sim.set_allocation(Allocation({"nope": Allocation.static_max(app).tiers["svc"]}))
    with pytest.raises(LeanstackError, match="cpu must be above 0"):
        sim.set_allocation(Allocation.static_max(app).with_tier("svc", cpu=0.0))
    with pytest.raises(LeanstackError, match="for app 'other'"):
        SimBackend(calibration={**NO_RPC, "app": "other"}).deploy(app, Allocation.static_max(app))
    with pytest.raises(LeanstackError, match="interval_s"):
        SimBackend(interval_s=0)
    sim.close()
    sim.close()
