"""Real faults on the local backend: they land in the tier's cgroup, and nothing outlives the
run (stress-ng processes, cgroups), also when the run is interrupted."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from tests._require import require
from tests.microservices.helpers import LOCAL_HOW, local_missing

from leanstack.microservices.app import parse_app
from leanstack.seer.campaign import EpisodePlan, observations, run_episode
from leanstack.seer.faults import Fault

pytestmark = pytest.mark.cgroups

TINY = """
name = "tiny"
[services.front.endpoints.get]
work = "json"
cpu_ms = 0.3
calls = [["back.get"]]
[services.back]
max_cpu = 0.5
[services.back.endpoints.get]
work = "hash"
cpu_ms = 0.5
calls = [["store.get"]]
[services.store]
kind = "redis"
[classes.read]
entry = "front.get"
weight = 1
sla = { percentile = 99, ms = 50 }
"""


@pytest.fixture(autouse=True, scope="module")
def _local_backend_can_run():
    require(local_missing() + ([] if shutil.which("stress-ng") else ["stress-ng"]), LOCAL_HOW)


def _stress_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-x", "stress-ng"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _our_cgroups() -> list[Path]:
    root = Path("/sys/fs/cgroup/cpu/leanstack")
    return [d for d in root.iterdir() if d.is_dir()] if root.is_dir() else []


def test_cpu_hog_lands_in_the_tier_and_is_cleaned_up(tmp_path):
    app = parse_app(tomllib.loads(TINY))
    before = set(_stress_pids())
    fault = Fault("cpu_hog", "back", start_s=4.0, duration_s=5.0, severity=0.8, ramp_s=0.0)
    res = run_episode(app, EpisodePlan(1, 50.0, "static", fault, 12.0), backend="local")
    obs = observations(res)
    used = [o.tiers["back"].cpu_used for o in obs]
    # during the fault the tier's cgroup burns its whole quota (0.5 cores), before it does not
    assert max(used[5:9]) > 0.35 and max(used[:3]) < 0.2
    assert max(o.tiers["front"].cpu_used for o in obs) < 0.3  # the hog stayed in 'back'
    assert set(_stress_pids()) <= before
    assert res["faults"][0]["tier"] == "back"


def test_sigkill_mid_fault_leaves_nothing_after_the_next_start(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(
        "import tomllib\n"
        "from leanstack.microservices.app import parse_app\n"
        "from leanstack.seer.campaign import EpisodePlan, run_episode\n"
        "from leanstack.seer.faults import Fault\n"
        f"app = parse_app(tomllib.loads({TINY!r}))\n"
        "f = Fault('memory_pressure', 'back', 1.0, 30.0, 0.2, 0.0)\n"
        "run_episode(app, EpisodePlan(1, 20.0, 'static', f, 40.0), backend='local')\n")
    before = set(_stress_pids())
    proc = subprocess.Popen([sys.executable, str(script)])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not set(_stress_pids()) - before:
        time.sleep(0.2)
    assert set(_stress_pids()) - before, "the fault never started"
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and set(_stress_pids()) - before:
        time.sleep(0.2)
    assert not set(_stress_pids()) - before  # PDEATHSIG took the stress-ng down
    from leanstack.microservices.cgroups import cleanup_stale_runs

    cleanup_stale_runs()
    assert not [d for d in _our_cgroups() if d.name.startswith(f"{proc.pid}-")]


def test_slow_downstream_delays_the_tiers_workers_and_is_lifted():
    app = parse_app(tomllib.loads(TINY))
    fault = Fault("slow_downstream", "back", start_s=3.0, duration_s=4.0, severity=0.5)
    res = run_episode(app, EpisodePlan(2, 30.0, "static", fault, 10.0), backend="local")
    own = [o.tiers["back"].own_latency_ms.get("p50", 0.0) for o in observations(res)]
    assert min(own[4:7]) > 40.0  # 50 ms of injected wait inside the worker
    assert max(own[:2]) < 20.0 and own[-1] < 20.0  # before, and after it was lifted
