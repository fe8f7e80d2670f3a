"""Calibration: distributions and RPC overheads recovered from spans; the file format."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from leanstack.errors import LeanstackError
from leanstack.microservices.app import load_app, parse_app
from leanstack.microservices.calibrate import (
    MIN_CPU_RATE,
    calibrate,
    fit_distribution,
)
from leanstack.microservices.calibration import (
    DEFAULT_RPC,
    RPC_KEYS,
    SHIPPED,
    load_calibration,
    rescaled,
    save_calibration,
    shipped_path,
)
from leanstack.microservices.load import LoadSpec
from leanstack.microservices.observation import Allocation, Span
from leanstack.microservices.sim import SimBackend

from .helpers import run_cli


def two_tier():
    return parse_app({
        "name": "two",
        "services": {
            "front": {"endpoints": {"in": {"cpu_ms": 1.0, "calls": [["back.x"], ["db.get"]]}}},
            "back": {"endpoints": {"x": {"cpu_ms": 2.0, "calls": [["db.set"]]}}},
            "db": {"kind": "redis"},
        },
        "classes": {"req": {"entry": "front.in", "weight": 1, "sla": {"percentile": 99,
                                                                       "ms": 50}}},
    })


def synthetic_spans(rng: np.random.Generator, n: int, own_ms: np.ndarray, db_ms: np.ndarray,
                    rpc_ms: float) -> list[Span]:
    """front.in (own work + rpc_ms self time) with one db.get child per trace."""
    spans = []
    t = 0
    for i in range(n):
        own, db = int(own_ms[i] * 1e6), int(db_ms[i] * 1e6)
        rpc = int(rpc_ms * 1e6)
        root = Span(f"{i:032x}", f"{2 * i:016x}", "", "front", "in", t, t + own + rpc + db,
                    {"leanstack.class": "req", "leanstack.cpu_ms": own_ms[i]})
        child = Span(f"{i:032x}", f"{2 * i + 1:016x}", root.span_id, "db", "get", t + own,
                     t + own + db, {"leanstack.class": "req"})
        spans += [root, child]
        t += 10_000_000
    return spans


def test_fit_recovers_gamma_and_lognormal():
    rng = np.random.default_rng(0)
    g = fit_distribution(rng.gamma(4.0, 0.5, 20000).tolist())  # mean 2, cv 0.5
    assert g["dist"] == "gamma"
    assert g["mean_ms"] == pytest.approx(2.0, rel=0.03)
    assert g["cv"] == pytest.approx(0.5, rel=0.05)
    ln = fit_distribution(rng.lognormal(0.0, 0.8, 20000).tolist())
    assert ln["dist"] == "lognormal"
    assert ln["cv"] == pytest.approx(np.sqrt(np.exp(0.64) - 1), rel=0.1)
    const = fit_distribution([0.7] * 10)
    assert const == {"dist": "constant", "mean_ms": 0.7, "cv": 0.0, "n": 10}
    with pytest.raises(LeanstackError, match="no positive samples"):
        fit_distribution([0.0, -1.0])


def test_calibrate_recovers_known_distributions_from_synthetic_spans():
    rng = np.random.default_rng(1)
    n = 5000
    db_ms = rng.gamma(25.0, 0.2 / 25.0, n)  # 0.2 ms, cv 0.2 ...
    db_ms[rng.random(n) < 0.15] += 20.0  # ... and a queueing tail the fit must leave out
    spans = synthetic_spans(rng, n, own_ms=rng.gamma(4.0, 0.75, n), db_ms=db_ms, rpc_ms=0.4)
    spans.append(Span("f" * 32, "e" * 16, "", "ghost", "x", 0, 1, {}))  # not in the app: ignored
    model = calibrate(two_tier(), spans)
    assert model["app"] == "two" and model["spans"] == 2 * n
    front = model["endpoints"]["front.in"]
    assert front["dist"] == "gamma" and front["n"] == n
    assert front["mean_ms"] == pytest.approx(3.0, rel=0.03)
    assert front["cv"] == pytest.approx(0.5, rel=0.05)
    db = model["storage"]["db.get"]
    assert db["mean_ms"] == pytest.approx(0.2, rel=0.1)
    assert db["cv"] < 0.3
    # one endpoint, one storage call: the 0.4 ms self time is spread over the default overheads
    rpc = model["rpc"]
    assert rpc["callee_ms"] + rpc["storage_caller_ms"] == pytest.approx(0.4, rel=0.02)


def test_calibrating_simulator_spans_recovers_the_simulators_model():
    app = load_app("social-network")
    truth = {"callee_ms": 0.35, "caller_ms": 0.15, "storage_caller_ms": 0.05}
    sim = SimBackend(seed=2, record_spans=True,
                     calibration={"version": 1, "app": app.name, "rpc": truth,
                                  "endpoints": {}, "storage": {}})
    sim.deploy(app, Allocation.static_max(app))
    sim.start(LoadSpec("poisson", rps=50, duration_s=20))  # light load: little queueing
    for _ in range(20):
        sim.observe()
    model = calibrate(app, sim.spans())
    for key, value in truth.items():
        assert model["rpc"][key] == pytest.approx(value, rel=0.25, abs=0.02), key
    text = model["endpoints"]["text.process"]
    assert text["mean_ms"] == pytest.approx(0.8, rel=0.15)
    assert text["cv"] == pytest.approx(0.5, rel=0.2)
    assert model["storage"]["user-store.get"]["mean_ms"] == pytest.approx(0.03, rel=0.2)


def test_tier_cpu_calibrates_overheads_storage_time_and_tier_extras():
    app = load_app("social-network")
    truth = {"callee_ms": 0.6, "caller_ms": 0.3, "storage_caller_ms": 0.12, "delay_ms": 0.5}
    load = LoadSpec("poisson", rps=100, duration_s=15)
    alloc = Allocation.static_max(app)

    def simulate(calibration: dict) -> tuple[list, list]:
        sim = SimBackend(seed=5, record_spans=True, calibration=calibration)
        sim.deploy(app, alloc)
        sim.start(load)
        return [sim.observe() for _ in range(15)], sim.spans()

    idle = {n: {"idle_cpu": 0.004} for n, s in app.services.items() if not s.is_storage}
    obs, spans = simulate({
        "version": 1, "app": app.name, "rpc": truth, "endpoints": {},
        "storage": {"user-store.get": {"dist": "gamma", "mean_ms": 0.05, "cv": 0.5}},
        "tiers": {**idle, "post-storage": {"extra_ms": 0.5, "idle_cpu": 0.004}}})
    model = calibrate(app, spans, obs)
    assert model["source"] == "spans+cpu"
    for key, value in truth.items():
        assert model["rpc"][key] == pytest.approx(value, rel=0.2), key
    # user-store serves only get: its CPU per op is the op time
    assert model["storage"]["user-store.get"]["mean_ms"] == pytest.approx(0.05, rel=0.1)
    # idle CPU per logic process: the intercept of CPU vs request rate, pooled over tiers
    for tier in idle:
        assert model["tiers"][tier]["idle_cpu"] == pytest.approx(0.004, abs=0.0015), tier
    extras = {t: d["extra_ms"] for t, d in model["tiers"].items()}
    assert extras["post-storage"] == pytest.approx(0.5, abs=0.1)
    assert max(abs(v) for t, v in extras.items() if t != "post-storage") < 0.1
    # closing the loop: the calibrated simulator burns the same CPU per tier
    again, _ = simulate(model)
    for tier in app.services:
        used = sum(o.tiers[tier].cpu_used for o in obs)
        assert sum(o.tiers[tier].cpu_used for o in again) == pytest.approx(used, rel=0.05), tier


def test_the_clients_share_of_latency_is_recovered_from_root_spans_and_class_latencies():
    """The load generator sees more than the entry tier's span (its HTTP client, the server
    before and after the handler): calibration finds that share's mean and spread from the
    roots and the class percentiles, and the per-call delay is fitted on top of it."""
    app = load_app("social-network")
    truth = {"callee_ms": 0.5, "caller_ms": 0.3, "storage_caller_ms": 0.1, "delay_ms": 0.3,
             "entry_ms": 3.0, "entry_cv": 1.5}
    sim = SimBackend(seed=4, record_spans=True, calibration={
        "version": 1, "app": app.name, "rpc": truth, "endpoints": {}, "storage": {}})
    sim.deploy(app, Allocation.static_max(app))
    sim.start(LoadSpec("poisson", rps=100, duration_s=25))
    obs = [sim.observe() for _ in range(25)]
    model = calibrate(app, sim.spans(), obs)
    assert model["rpc"]["entry_ms"] == pytest.approx(3.0, rel=0.3)
    assert 0.75 <= model["rpc"]["entry_cv"] <= 3.0
    assert model["rpc"]["delay_ms"] == pytest.approx(0.3, abs=0.15)
    without = calibrate(app, sim.spans(), None)  # spans alone: nothing to compare roots with
    assert "entry_ms" not in without["rpc"]


def test_the_clients_share_adds_to_class_latency_and_delays_no_tier():
    app = two_tier()
    load = LoadSpec("constant", rps=20, duration_s=4)
    seen = {}
    for entry in (0.0, 10.0):
        sim = SimBackend(seed=1, calibration={
            "version": 1, "app": "two", "endpoints": {}, "storage": {},
            "rpc": {"entry_ms": entry, "entry_cv": 0.1}})
        sim.deploy(app, Allocation.static_max(app))
        sim.start(load)
        seen[entry] = [sim.observe() for _ in range(4)][-1]
    p50 = {e: o.classes["req"].latency_ms["p50"] for e, o in seen.items()}
    assert p50[10.0] - p50[0.0] == pytest.approx(10.0, abs=1.5)
    own = {e: o.tiers["front"].own_latency_ms["p50"] for e, o in seen.items()}
    assert own[10.0] == pytest.approx(own[0.0], abs=0.05)


def test_calibration_changes_the_simulation(tmp_path):
    app = two_tier()
    model = {"version": 1, "app": "two", "rpc": {},
             "endpoints": {"back.x": {"dist": "constant", "mean_ms": 20.0, "cv": 0.0}},
             "storage": {}}
    path = tmp_path / "calib.json"
    save_calibration(model, path)
    load = LoadSpec("constant", rps=10, duration_s=3)
    p50 = {}
    for name, calib in (("default", None), ("slow", path)):
        sim = SimBackend(calibration=calib)
        sim.deploy(app, Allocation.static_max(app))
        sim.start(load)
        p50[name] = [sim.observe() for _ in range(3)][-1].classes["req"].latency_ms["p50"]
    assert p50["slow"] > p50["default"] + 17.0


def test_save_and_load_round_trip_atomically(tmp_path):
    model = calibrate(two_tier(), synthetic_spans(np.random.default_rng(3), 50,
                                                  np.full(50, 1.0), np.full(50, 0.1), 0.2))
    path = tmp_path / "sub" / "calib.json"
    save_calibration(model, path)
    assert load_calibration(path) == json.loads(json.dumps(model))
    assert [p.name for p in path.parent.iterdir()] == ["calib.json"]  # no temp file left
    with pytest.raises(LeanstackError):
        save_calibration({"version": 1}, tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "not valid JSON"),
    ("[]", "expected a JSON object"),
    ('{"version": 9, "app": "x", "rpc": {}, "endpoints": {}, "storage": {}}', "version"),
    ('{"version": 1, "app": "x", "rpc": {"callee_ms": -1}, "endpoints": {}, "storage": {}}',
     "rpc.callee_ms"),
    ('{"version": 1, "app": "x", "rpc": {"entry_cv": -0.5}, "endpoints": {}, "storage": {}}',
     "rpc.entry_cv"),
    ('{"version": 1, "app": "x", "rpc": {}, "endpoints": {"a.b": {"dist": "weibull"}},'
     ' "storage": {}}', "endpoints.a.b.dist"),
    ('{"version": 1, "app": "x", "rpc": {}, "endpoints": {},'
     ' "storage": {"s.get": {"dist": "gamma", "mean_ms": 0, "cv": 1}}}', "storage.s.get.mean_ms"),
    ('{"version": 1, "app": "x", "rpc": {}, "endpoints": {}, "storage": {},'
     ' "tiers": {"a": {"extra_ms": "x"}}}', "tiers.a.extra_ms"),
    ('{"version": 1, "app": "x", "rpc": {}, "endpoints": {}, "storage": {}, "host_cores": 0}',
     "host_cores"),
])
def test_bad_calibration_file_is_a_one_line_error(tmp_path, content, message):
    path = tmp_path / "calib.json"
    path.write_text(content)
    with pytest.raises(LeanstackError, match=message) as info:
        load_calibration(path)
    assert "\n" not in str(info.value) and "calibrate" in str(info.value)


def test_spans_of_another_app_are_an_error():
    ghost = Span("f" * 32, "e" * 16, "", "ghost", "x", 0, 1, {})
    with pytest.raises(LeanstackError, match="none of the 1 spans belongs to a tier of app 'two'"):
        calibrate(two_tier(), [ghost])


def test_missing_calibration_file(tmp_path):
    with pytest.raises(LeanstackError, match="not found"):
        load_calibration(tmp_path / "nope.json")
    app = two_tier()
    with pytest.raises(LeanstackError, match="not found"):
        SimBackend(calibration=tmp_path / "nope.json").deploy(app, Allocation.static_max(app))


def test_calibrating_a_pipeline_skips_consumers_as_calls_and_failed_spans():
    app = load_app("video-pipeline")
    sim = SimBackend(seed=1, record_spans=True)
    sim.deploy(app, Allocation.static_max(app))
    sim.start(LoadSpec("poisson", rps=20, duration_s=20))
    for _ in range(20):
        sim.observe()
    spans = sim.spans()
    failed = Span("a" * 32, "b" * 16, "", "upload", "meta", 0, 10**9,
                  {"leanstack.class": "read-meta", "leanstack.cpu_ms": 500.0, "error": True})
    model = calibrate(app, [*spans, failed])
    assert "video-queue.rpush" in model["storage"]
    assert model["endpoints"]["face-detect.detect"]["mean_ms"] == pytest.approx(10.0, rel=0.1)
    assert model["endpoints"]["upload.meta"]["mean_ms"] == pytest.approx(0.3, rel=0.15)
    # consumer spans hang under their producer but are not calls: the overheads stay put
    assert model["rpc"]["callee_ms"] == pytest.approx(0.3, abs=0.03)
    assert model["rpc"]["storage_caller_ms"] == pytest.approx(0.08, abs=0.015)


def test_calibration_records_the_host_core_count():
    spans = synthetic_spans(np.random.default_rng(4), 50, np.full(50, 1.0), np.full(50, 0.1), 0.2)
    assert calibrate(two_tier(), spans)["host_cores"] == os.cpu_count()
    assert calibrate(two_tier(), spans, host_cores=4)["host_cores"] == 4
    with pytest.raises(LeanstackError, match="host_cores must be a number above 0"):
        calibrate(two_tier(), spans, host_cores=0)


def test_cli_calibrates_from_spans_and_the_result_of_the_same_run(monkeypatch, capsys, tmp_path):
    res, spans, out = tmp_path / "r.json", tmp_path / "s.jsonl", tmp_path / "c.json"
    code, _, err = run_cli(monkeypatch, capsys, "micro", "run", "--app", "social-network",
                           "--rps", "60", "--duration", "8", "--quiet", "--out", str(res),
                           "--spans", str(spans))
    assert code == 0, err
    data = json.loads(res.read_text())
    data["environment"]["cpu_count"] = 7  # the machine that ran it, not this one
    res.write_text(json.dumps(data))
    code, stdout, err = run_cli(monkeypatch, capsys, "micro", "calibrate", "--app",
                                "social-network", "--spans", str(spans), "--result", str(res),
                                "--out", str(out))
    assert code == 0, err
    assert str(res) in stdout
    model = load_calibration(out)
    assert model["source"] == "spans+cpu" and model["host_cores"] == 7
    assert "post-storage" in model["tiers"]
    code, _, err = run_cli(monkeypatch, capsys, "micro", "calibrate", "--app", "hotel-reservation",
                           "--spans", str(spans), "--result", str(res), "--out", str(out))
    assert code == 2 and "a result of app 'social-network'" in err and err.count("\n") == 1
    data["timeline"] = []
    res.write_text(json.dumps(data))
    code, _, err = run_cli(monkeypatch, capsys, "micro", "calibrate", "--app", "social-network",
                           "--spans", str(spans), "--result", str(res), "--out", str(out))
    assert code == 2 and "timeline is empty" in err and err.count("\n") == 1


@pytest.mark.parametrize("app_name", ["social-network", "hotel-reservation"])
def test_the_shipped_calibrations_load_and_slow_the_simulator_to_real_processes(app_name):
    """Each shipped calibration is a valid file for its app, fitted on spans and tier CPU of
    real processes (RPC costs above the app file's defaults, a client share of latency), and
    ``"shipped"`` selects it."""
    app = load_app(app_name)
    model = load_calibration(shipped_path(app_name))
    assert model["app"] == app_name and model["source"] == "spans+cpu"
    assert sum(model["rpc"][k] for k in RPC_KEYS) > sum(DEFAULT_RPC[k] for k in RPC_KEYS)
    assert model["rpc"]["entry_ms"] > 0
    load = LoadSpec("poisson", rps=40, duration_s=6)
    p50 = {}
    for calib in (None, SHIPPED):
        sim = SimBackend(seed=3, calibration=calib)
        sim.deploy(app, Allocation.static_max(app))
        sim.start(load)
        obs = [sim.observe() for _ in range(6)][2:]
        p50[calib] = np.median([o.classes[c].latency_ms["p50"] for o in obs for c in o.classes
                                if o.classes[c].completed])
    assert p50[SHIPPED] > 1.5 * p50[None]


def test_an_app_without_a_shipped_calibration_is_a_one_line_error(monkeypatch, capsys, tmp_path):
    with pytest.raises(LeanstackError, match="no calibration ships for app 'two'.*"
                                             "social-network.*micro calibrate"):
        SimBackend(calibration=SHIPPED).deploy(two_tier(), Allocation.static_max(two_tier()))
    code, _, err = run_cli(monkeypatch, capsys, "micro", "run", "--app", "media-service",
                           "--duration", "2", "--quiet", "--calibration", "shipped",
                           "--out", str(tmp_path / "r.json"))
    assert code != 0 and "no calibration ships for app 'media-service'" in err
    assert err.count("\n") == 1


def test_tiers_called_too_rarely_keep_span_times_and_the_shared_overheads():
    # hotel reservation at 50 req/s: user and user-store see 0.4 calls/s, where an idle-CPU
    # error of 0.002 cores reads as 5 ms per call. Their idle CPU differs from their kind's
    # (which the calibration pools), so a CPU-based reading would be far off.
    app = load_app("hotel-reservation")
    tiers = {n: {"idle_cpu": 0.001 if s.is_storage else 0.004}
             for n, s in app.services.items()}
    tiers["user-store"] = {"idle_cpu": 0.003}
    tiers["user"] = {"idle_cpu": 0.008}
    sim = SimBackend(seed=3, record_spans=True, calibration={
        "version": 1, "app": app.name, "endpoints": {}, "tiers": tiers,
        "rpc": {"callee_ms": 0.5, "caller_ms": 0.3, "storage_caller_ms": 0.2},
        "storage": {"user-store.get": {"dist": "gamma", "mean_ms": 0.05, "cv": 0.5}}})
    sim.deploy(app, Allocation.static_max(app))
    sim.start(LoadSpec("poisson", rps=50, duration_s=30))
    obs = [sim.observe() for _ in range(30)]
    model = calibrate(app, sim.spans(), obs)
    assert 0 < obs[-1].tiers["user"].rps < MIN_CPU_RATE
    assert model["storage"]["user-store.get"]["mean_ms"] == pytest.approx(0.05, rel=0.5)
    assert model["tiers"].get("user", {}).get("extra_ms", 0.0) == 0.0
    assert model["rpc"]["callee_ms"] == pytest.approx(0.5, rel=0.2)


def test_a_rescaled_calibration_burns_that_much_more_cpu_for_the_same_work():
    """A machine 1.3x slower: every time in the model grows 1.3x, the original is untouched,
    and the simulator burns 1.3x the tiers' CPU for the same arrivals."""
    model = load_calibration(shipped_path("social-network"))
    slow = rescaled(model, 1.3)
    ep = next(iter(model["endpoints"]))
    before, after = model["endpoints"][ep], slow["endpoints"][ep]
    assert after["mean_ms"] == pytest.approx(1.3 * before["mean_ms"])
    assert after["cv"] == before["cv"]
    assert slow["rpc"]["callee_ms"] == pytest.approx(1.3 * model["rpc"]["callee_ms"])
    assert slow["rpc"]["entry_cv"] == model["rpc"]["entry_cv"]
    assert slow["host_cores"] == model["host_cores"]
    assert model == load_calibration(shipped_path("social-network"))
    app = load_app("social-network")
    used = {}
    for name, calib in (("as fitted", model), ("slower", slow)):
        sim = SimBackend(seed=1, calibration=calib)
        sim.deploy(app, Allocation.static_max(app))
        sim.start(LoadSpec("poisson", rps=40, duration_s=5))
        used[name] = sum(t.cpu_used for o in [sim.observe() for _ in range(5)][1:]
                         for t in o.tiers.values())
    assert used["slower"] / used["as fitted"] == pytest.approx(1.3, rel=0.03)


@pytest.mark.parametrize("factor", [0, -1.0, float("inf"), "2"])
def test_a_bad_speed_factor_is_a_one_line_error(factor):
    with pytest.raises(LeanstackError, match="speed factor must be a number above 0"):
        rescaled(load_calibration(shipped_path("social-network")), factor)
