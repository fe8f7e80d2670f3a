"""Calibration: fit the simulator's service-time model from spans of a real run.

The model is plain JSON (its schema, save and load live in
:mod:`~leanstack.microservices.calibration`)::

    {"version": 1, "app": "social-network",
     "rpc": {"callee_ms": 0.3, "caller_ms": 0.2, "storage_caller_ms": 0.08},
     "endpoints": {"nginx.read_home_timeline":
                   {"dist": "gamma", "mean_ms": 0.4, "cv": 0.6, "n": 812}},
     "storage": {"user-store.get":
                 {"dist": "lognormal", "mean_ms": 0.09, "cv": 0.4, "n": 640}},
     "spans": 5120, "source": "spans", "host_cores": 2}

- ``endpoints``: each logic endpoint's own-work CPU, from the span attribute ``leanstack.cpu_ms``;
- ``storage``: each storage operation's time, from the storage (client) spans' durations, their
  far tail (beyond median + 4 MAD: waits the simulator reproduces by itself) left out;
- ``rpc``: per-RPC CPU overheads, from each logic span's self time (duration minus the union of its
  children, minus its own work; the lower quartile per endpoint) regressed on the logic and
  storage answers it waited for.

Given the run's observations as well (``source = "spans+cpu"``), the storage op times (the
server's CPU per call) and RPC overheads come from tier CPU instead, and
``tiers.<name>.idle_cpu`` the cores a process of that tier burns whatever the load (see
``_idle_cpu``), ``tiers.<name>.extra_ms`` the CPU per visit of a logic tier that those
overheads leave unexplained (added to each visit's first segment; where it is below minus the
callee overhead the simulator takes the rest off the visit's answers), which is what makes
per-tier CPU in the simulator match. Tiers serving under ``MIN_CPU_RATE`` requests a second
keep the spans' operation times and the shared overheads: their CPU per request is noise.
``rpc.delay_ms`` is then the wall time every call takes without costing CPU (loopback
network, wake-ups, client queues), chosen so that the simulator's per-class median latencies
under the run's allocation and rate add up to the observed ones.
Before it, ``rpc.entry_ms`` and ``rpc.entry_cv``: the client's share of each request's latency
(the load generator's HTTP client and the entry tier's HTTP server outside its span), a gamma
whose mean and CV make the entry tiers' root spans plus a draw give the per-class p50 and p99
the load generator measured (see ``_fit_entry``); at the static maximum on this machine it
holds most of the reads' tail the simulator used to miss.

``host_cores`` is the core count of the machine the spans come from: the simulator shares that
many cores between all tiers by default.

Each distribution is a gamma or a lognormal with the samples' mean and coefficient of variation,
whichever fits the samples with the higher likelihood (``constant`` when they do not vary).
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from leanstack.errors import LeanstackError
from leanstack.microservices.app import AppSpec
from leanstack.microservices.calibration import (
    DEFAULT_RPC,
    RPC_KEYS,
    VERSION,
)
from leanstack.microservices.observation import Observation, Span
from leanstack.microservices.sim import SimBackend

CPU_ATTR = "leanstack.cpu_ms"
CLASS_ATTR = "leanstack.class"
ENTRY_CVS = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0)  # the client share's CVs tried
ENTRY_MIN_SPANS = 5  # root spans of a class in an interval before it counts in the fit
DELAY_FIT_S = 30.0  # simulated seconds per trial when fitting the per-call delay
DELAY_MAX_MS = 5.0
MIN_CPU_RATE = 5.0
"""Requests (calls) per second a tier must serve before its CPU per request is read from its
CPU use: below it, the noise of its idle CPU dominates (0.001 core of error is 2.5 ms per
request at 0.4 req/s), and the tier keeps the spans' operation times and the shared RPC
overheads instead."""


def calibrate(app: AppSpec, spans: list[Span], observations: list[Observation] | None = None,
              host_cores: float | None = None) -> dict[str, Any]:
    """Fit per-endpoint, per-storage-op and RPC-overhead service times from ``spans``.

    Pass the run's ``observations`` too and tier CPU becomes the witness for what spans cannot
    see: a storage op's time is its server's CPU per op, and the RPC overheads are what logic
    tiers burn per visit beyond their own work, regressed on their calls per visit.
    ``host_cores``: cores of the machine that ran it (default: this machine's).
    """
    if host_cores is None:
        host_cores = os.cpu_count() or 1
    if not (_number(host_cores) and host_cores > 0):
        raise LeanstackError(f"host_cores must be a number above 0, got {host_cores!r}")
    children: dict[str, list[Span]] = defaultdict(list)
    for s in spans:
        if s.parent_span_id:
            children[s.parent_span_id].append(s)
    cpu: dict[str, list[float]] = defaultdict(list)
    op_ms: dict[str, list[float]] = defaultdict(list)
    rows: dict[str, list[tuple[float, int, int]]] = defaultdict(list)  # excess, n_logic, n_store
    calls: dict[str, list[tuple[int, int]]] = defaultdict(list)  # per tier: logic, storage calls
    used = 0
    for s in spans:
        svc = app.services.get(s.service)
        if svc is None or not (svc.is_storage or svc.has_endpoint(s.name)):
            continue
        used += 1
        if s.attributes.get("error"):
            continue
        key = f"{s.service}.{s.name}"
        if svc.is_storage:
            op_ms[key].append(s.duration_ms)
            continue
        own = s.attributes.get(CPU_ATTR)
        if not isinstance(own, int | float):
            continue
        cpu[key].append(float(own))
        kids = [k for k in children.get(s.span_id, []) if not _is_consumer(app, k)]
        n_store = sum(_is_storage(app, k) for k in kids)
        calls[s.service].append((len(kids) - n_store, n_store))
        if svc.queue is None:
            n_logic, n_store = _visible_answers(app, kids)
            excess = s.duration_ms - _union_ms(s, kids) - float(own)
            rows[key].append((excess, n_logic, n_store))
    if used == 0:
        raise LeanstackError(f"none of the {len(spans)} spans belongs to a tier of app "
                             f"'{app.name}' — record spans from a run of this app")
    storage = {k: fit_distribution(_unqueued(v)) for k, v in sorted(op_ms.items())
               if max(v) > 0}
    rpc = _fit_rpc(rows, DEFAULT_RPC)
    extra: dict[str, float] = {}
    idle: dict[str, float] = {}
    if observations:
        idle = _idle_cpu(app, observations)
        per_op = _cpu_per_request_ms(observations, idle)
        per_call = _storage_cpu_per_call_ms(app, spans, observations, idle)
        for key, d in storage.items():
            server = per_call.get(key.split(".", 1)[0])
            if server:
                storage[key] = {**d, "mean_ms": server}
        rpc, extra = _fit_rpc_from_cpu(app, cpu, calls, per_op, rpc)
    model = {
        "version": VERSION,
        "app": app.name,
        "rpc": rpc,
        "endpoints": {k: fit_distribution(v) for k, v in sorted(cpu.items()) if max(v) > 0},
        "storage": storage,
        "tiers": {t: {"extra_ms": extra.get(t, 0.0), "idle_cpu": idle.get(t, 0.0)}
                  for t in sorted(extra.keys() | idle.keys())},
        "spans": used,
        "source": "spans+cpu" if observations else "spans",
        "host_cores": host_cores,
    }
    if observations:
        model["rpc"]["entry_ms"], model["rpc"]["entry_cv"] = _fit_entry(app, spans, observations)
        model["rpc"]["delay_ms"] = _fit_delay_ms(app, model, observations)
    return model


def observations_of(result_path: str | Path,
                    app: AppSpec) -> tuple[list[Observation], float | None]:
    """The observations in an experiment result's timeline and the core count of the machine
    that ran it (``None`` when the result does not say)."""
    from leanstack.microservices.result import load_result

    result = load_result(result_path)
    if result["app"] != app.name:
        raise LeanstackError(f"{result_path}: a result of app '{result['app']}', not "
                             f"'{app.name}' — pass the result of the run the spans come from")
    try:
        observations = [Observation.from_dict(e) for e in result["timeline"]]
    except (KeyError, TypeError, AttributeError) as e:
        raise LeanstackError(f"{result_path}: malformed timeline entry ({type(e).__name__}: "
                             f"{e}) — pass a file written by 'leanstack micro run'") from None
    if not observations:
        raise LeanstackError(f"{result_path}: the timeline is empty — pass the result of a run "
                             "that observed at least one interval")
    cores = result["environment"].get("cpu_count") if isinstance(
        result["environment"], dict) else None
    return observations, cores if _number(cores) and cores > 0 else None


def fit_distribution(samples_ms: list[float]) -> dict[str, Any]:
    """Mean, CV and the better of gamma / lognormal (by log-likelihood) for positive samples."""
    from scipy import stats

    x = np.asarray(samples_ms, dtype=float)
    x = x[np.isfinite(x) & (x > 0)]
    if x.size == 0:
        raise LeanstackError("no positive samples to fit — record spans under load first")
    mean = float(x.mean())
    cv = float(x.std() / mean) if x.size > 1 else 0.0
    if cv < 1e-6:
        return {"dist": "constant", "mean_ms": mean, "cv": 0.0, "n": int(x.size)}
    shape = 1.0 / cv**2
    ll_gamma = stats.gamma.logpdf(x, shape, scale=mean / shape).sum()
    sigma2 = math.log1p(cv**2)
    ll_lognorm = stats.lognorm.logpdf(x, math.sqrt(sigma2),
                                      scale=math.exp(math.log(mean) - sigma2 / 2)).sum()
    dist = "gamma" if ll_gamma >= ll_lognorm else "lognormal"
    return {"dist": dist, "mean_ms": mean, "cv": cv, "n": int(x.size)}


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _is_storage(app: AppSpec, span: Span) -> bool:
    svc = app.services.get(span.service)
    return svc is not None and svc.is_storage


def _is_consumer(app: AppSpec, span: Span) -> bool:
    """A queue consumer's span: a child of its producer in the trace, but not a call."""
    svc = app.services.get(span.service)
    return svc is not None and svc.queue is not None


def _union_ms(parent: Span, kids: list[Span]) -> float:
    """Milliseconds of ``parent`` covered by at least one child span."""
    covered = 0
    end = parent.start_ns
    for s in sorted(kids, key=lambda k: k.start_ns):
        lo, hi = max(s.start_ns, end), min(s.end_ns, parent.end_ns)
        if hi > lo:
            covered += hi - lo
            end = hi
    return covered / 1e6


def _visible_answers(app: AppSpec, kids: list[Span]) -> tuple[int, int]:
    """Answers whose handling shows in the parent's self time: logic and storage counts.

    Overlapping children are one parallel group; only the answer of the child that ends last
    adds to the parent's latency (the others are handled while it still waits).
    """
    n_logic = n_store = 0
    last: Span | None = None
    for s in sorted(kids, key=lambda k: k.start_ns):
        if last is not None and s.start_ns >= last.end_ns:
            n_store += _is_storage(app, last)
            n_logic += not _is_storage(app, last)
            last = None
        if last is None or s.end_ns > last.end_ns:
            last = s
    if last is not None:
        n_store += _is_storage(app, last)
        n_logic += not _is_storage(app, last)
    return n_logic, n_store


def _unqueued(samples_ms: list[float]) -> list[float]:
    """Samples up to the median + 4 median absolute deviations: round trips not stretched by
    waiting.

    A storage client span also covers the time its caller's event loop was busy with other
    requests; the simulator produces that wait by itself, so the fit leaves that tail out.
    """
    x = np.asarray(samples_ms, dtype=float)
    med = np.median(x)
    return x[x <= med + 4 * np.median(np.abs(x - med))].tolist()


def _idle_cpu(app: AppSpec, observations: list[Observation]) -> dict[str, float]:
    """Per tier: the CPU (cores) it burns whatever the load (span flushes, stats, a server's
    timers), per replica of its kind.

    Each tier's CPU regressed on its request rate across intervals gives an intercept; the
    median intercept over the tiers of one kind (logic, redis, memcached) is that kind's idle
    CPU per process, kept below half of any tier's mean use. Needs at least 10 intervals.
    """
    if len(observations) < 10:
        return {}
    by_kind: dict[str, list[float]] = defaultdict(list)
    means: dict[str, float] = {}
    for name, svc in app.services.items():
        rows = [(o.tiers[name].rps, o.tiers[name].cpu_used / max(o.tiers[name].replicas, 1))
                for o in observations if name in o.tiers]
        x, y = np.asarray(rows, dtype=float).reshape(-1, 2).T
        if x.size < 10 or np.ptp(x) <= 0:
            continue
        by_kind[svc.kind].append(float(np.polyfit(x, y, 1)[1]))
        means[name] = float(y.mean())
    out = {}
    for name, mean in means.items():
        per_kind = float(np.median(by_kind[app.services[name].kind]))
        out[name] = min(max(per_kind, 0.0), 0.5 * mean)
    return out


def _cpu_per_request_ms(observations: list[Observation],
                        idle: dict[str, float]) -> dict[str, float]:
    """Per tier: CPU milliseconds per request served beyond its idle CPU, over all intervals
    that served some; tiers serving under MIN_CPU_RATE requests/s over the run are left out."""
    cpu_s: dict[str, float] = defaultdict(float)
    served: dict[str, float] = defaultdict(float)
    for o in observations:
        for name, t in o.tiers.items():
            if t.rps > 0:
                busy = t.cpu_used - idle.get(name, 0.0) * max(t.replicas, 1)
                cpu_s[name] += busy * o.interval_s
                served[name] += t.rps * o.interval_s
    seconds = sum(o.interval_s for o in observations)
    return {n: 1e3 * cpu_s[n] / served[n] for n in cpu_s
            if served[n] > 0 and served[n] / seconds >= MIN_CPU_RATE}


def _class_p50s(observations: list[Observation]) -> dict[str, float]:
    """Per class: the median over intervals (with completions) of the interval's p50."""
    out = {}
    for name in observations[0].classes:
        vals = [o.classes[name].latency_ms["p50"] for o in observations
                if name in o.classes and o.classes[name].completed]
        if vals:
            out[name] = float(np.median(vals))
    return out


def _fit_entry(app: AppSpec, spans: list[Span],
               observations: list[Observation]) -> tuple[float, float]:
    """The client's share of request latency: mean (ms) and CV of a gamma that, added to the
    entry tiers' root spans, gives the per-class latencies the load generator measured.

    Same estimator on both sides: per interval, each class's p50 and p99 of (root span + a draw),
    then the median over intervals. For each CV of ``ENTRY_CVS`` the mean is bisected until the
    medians add up; the CV whose p99s then come closest (relative error) is kept. ``(0, 0)``
    where the spans hold no roots to compare, or the roots alone are as slow as the client saw.
    """
    interval_ns = observations[0].interval_s * 1e9
    ids = {s.span_id for s in spans}  # a root's parent is the load generator's, not recorded
    by_class: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for s in spans:
        c = s.attributes.get(CLASS_ATTR)
        if s.parent_span_id not in ids and c in app.classes and app.classes[c].wait != "pipeline":
            by_class[c][int(s.end_ns // interval_ns)].append(s.duration_ms)
    measured = {c: [o.classes[c].latency_ms for o in observations
                    if c in o.classes and o.classes[c].completed] for c in by_class}
    groups = {c: [np.asarray(v) for v in by_class[c].values() if len(v) >= ENTRY_MIN_SPANS]
              for c in by_class if measured[c]}
    groups = {c: g for c, g in groups.items() if g}
    if not groups:
        return 0.0, 0.0
    target = {c: (float(np.median([m["p50"] for m in measured[c]])),
                  float(np.median([m["p99"] for m in measured[c]]))) for c in groups}

    def medians(unit: dict[str, list[np.ndarray]], mean: float, q: int) -> dict[str, float]:
        """Per class, the median over intervals of the ``q``th percentile of root + draw."""
        return {c: float(np.median([np.percentile(d + mean * u, q)
                                    for d, u in zip(g, unit[c], strict=True)]))
                for c, g in groups.items()}

    def p50_excess(unit: dict[str, list[np.ndarray]], mean: float) -> float:
        return sum(m - target[c][0] for c, m in medians(unit, mean, 50).items())

    best = (math.inf, 0.0, 0.0)
    for cv in ENTRY_CVS:
        rng = np.random.default_rng(0)
        shape = 1.0 / cv**2
        unit = {c: [rng.gamma(shape, 1.0 / shape, d.size) for d in g] for c, g in groups.items()}
        if p50_excess(unit, 0.0) >= 0:
            return 0.0, 0.0
        lo, hi = 0.0, max(t[0] for t in target.values())
        for _ in range(12):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if p50_excess(unit, mid) < 0 else (lo, mid)
        mean = (lo + hi) / 2
        err = sum((m / target[c][1] - 1) ** 2 for c, m in medians(unit, mean, 99).items())
        if err < best[0]:
            best = (err, mean, cv)
    return best[1], best[2]


def _fit_delay_ms(app: AppSpec, model: dict[str, Any], observations: list[Observation]) -> float:
    """The per-call wall-time delay (no CPU) that makes the simulator's per-class median
    latencies add up to the observed ones, under the observed allocation and mean rate.

    Bisection over simulations of the same length (at most DELAY_FIT_S): latency grows with
    the delay, and ~0.05 ms resolution is far below the run-to-run noise.
    """
    from leanstack.microservices.load import LoadSpec
    from leanstack.microservices.observation import Allocation, TierAllocation

    target = _class_p50s(observations)
    first = observations[0]
    rate = float(np.mean([o.offered_rps for o in observations]))
    seconds = min(sum(o.interval_s for o in observations), DELAY_FIT_S)
    if not target or rate <= 0 or any(n not in first.tiers for n in app.services):
        return 0.0
    alloc = Allocation({n: TierAllocation(t.cpu_limit, max(t.replicas, 1))
                        for n, t in first.tiers.items() if n in app.services})
    load = LoadSpec("poisson", rps=rate, duration_s=seconds, seed=0)

    def excess(delay_ms: float) -> float:
        sim = SimBackend(interval_s=first.interval_s, calibration={
            **model, "rpc": {**model["rpc"], "delay_ms": delay_ms}})
        sim.deploy(app, alloc)
        sim.start(load)
        obs = [sim.observe() for _ in range(max(int(seconds / first.interval_s), 1))]
        got = _class_p50s(obs)
        return sum(got.get(c, 0.0) - v for c, v in target.items())

    lo, hi = 0.0, DELAY_MAX_MS
    if excess(lo) >= 0:
        return 0.0
    if excess(hi) <= 0:
        return hi
    for _ in range(7):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if excess(mid) < 0 else (lo, mid)
    return (lo + hi) / 2


def _storage_cpu_per_call_ms(app: AppSpec, spans: list[Span], observations: list[Observation],
                             idle: dict[str, float]) -> dict[str, float]:
    """Per storage tier called at least MIN_CPU_RATE times a second: its CPU rate beyond idle
    over the observations / its call rate in the spans.

    Calls, not the server's own operation count: a redis pipeline (``zadd`` trims its set too)
    is one call of several commands, and the simulator charges per call.
    """
    t0 = min((s.start_ns for s in spans), default=0)
    t1 = max((s.end_ns for s in spans), default=0)
    seconds = sum(o.interval_s for o in observations)
    if t1 <= t0 or seconds <= 0:
        return {}
    calls: dict[str, int] = defaultdict(int)
    for s in spans:
        if _is_storage(app, s):
            calls[s.service] += 1
    out = {}
    for name, n in calls.items():
        rate = n / ((t1 - t0) / 1e9)
        cpu_s = sum((o.tiers[name].cpu_used - idle.get(name, 0.0)) * o.interval_s
                    for o in observations if name in o.tiers)
        if cpu_s > 0 and rate >= MIN_CPU_RATE:
            out[name] = 1e3 * (cpu_s / seconds) / rate
    return out


def _fit_rpc_from_cpu(app: AppSpec, own: dict[str, list[float]],
                      calls: dict[str, list[tuple[int, int]]], per_visit: dict[str, float],
                      fallback: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """RPC overheads from logic tiers' CPU per visit beyond own work vs calls per visit, and
    per tier the CPU per visit those overheads leave unexplained (``extra_ms``, may be < 0)."""
    from scipy import optimize

    tiers, a, b = [], [], []
    for tier, counts in calls.items():
        if tier not in per_visit:
            continue
        works = [w for k, v in own.items() if k.split(".", 1)[0] == tier for w in v]
        arr = np.asarray(counts, dtype=float)
        queue_fed = app.services[tier].queue is not None
        # a consumer's fixed cost per visit is taking a message (a storage answer)
        a.append([0.0 if queue_fed else 1.0, arr[:, 0].mean(), arr[:, 1].mean() + queue_fed])
        b.append(per_visit[tier] - float(np.mean(works)))
        tiers.append(tier)
    a_m, b_v = np.asarray(a).reshape(-1, 3), np.asarray(b)
    rpc = fallback
    if len(a) >= 3 and np.linalg.matrix_rank(a_m) == 3:
        # least absolute deviations, x >= 0: a tier with its own extra cost does not drag the
        # shared overheads (minimise sum(u + v) subject to A x + u - v = b)
        n = len(b_v)
        res = optimize.linprog(np.r_[np.zeros(3), np.ones(2 * n)],
                               A_eq=np.hstack([a_m, np.eye(n), -np.eye(n)]), b_eq=b_v,
                               bounds=[(0, None)] * (3 + 2 * n), method="highs")
        if res.success:
            rpc = dict(zip(RPC_KEYS, (float(v) for v in res.x[:3]), strict=True))
    explained = a_m @ np.array([rpc[k] for k in RPC_KEYS])
    return rpc, {t: float(e) for t, e in zip(tiers, b_v - explained, strict=True)}


def _fit_rpc(rows: dict[str, list[tuple[float, int, int]]],
             default: dict[str, float]) -> dict[str, float]:
    """RPC overheads from per-endpoint excess time (its lower quartile, where no waiting
    hides in it) vs the logic / storage answers the endpoint waited for.

    With enough distinct endpoints a non-negative least-squares fit gives all three overheads;
    otherwise the defaults are scaled by one factor that fits the data.
    """
    from scipy import optimize

    if not rows:
        return dict(default)
    a, b = [], []
    for samples in rows.values():
        arr = np.asarray(samples, dtype=float)
        a.append([1.0, arr[:, 1].mean(), arr[:, 2].mean()])
        b.append(max(float(np.percentile(arr[:, 0], 25)), 0.0))  # the unqueued part
    a_m, b_v = np.asarray(a), np.asarray(b)
    if np.linalg.matrix_rank(a_m) == 3:
        x, _ = optimize.nnls(a_m, b_v)
        return dict(zip(RPC_KEYS, (float(v) for v in x), strict=True))
    base = a_m @ np.array([default[k] for k in RPC_KEYS])
    scale = float(base @ b_v / (base @ base)) if base @ base > 0 else 1.0
    return {k: default[k] * max(scale, 0.0) for k in RPC_KEYS}
