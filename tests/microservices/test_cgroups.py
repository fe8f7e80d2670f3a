"""cgroup v1 quotas really limit CPU, change live, and stale runs are cleaned up."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from leanstack.errors import LeanstackError
from leanstack.microservices import cgroups
from leanstack.microservices.cgroups import (
    RunCgroups,
    check_available,
    cleanup_stale_runs,
    die_with_parent,
)

from .helpers import alive


def _writable() -> bool:
    try:
        check_available()
    except LeanstackError:
        return False
    return True


def needs_cgroups(test):
    """Mark a test as needing writable cgroups and skip it cleanly where they are not."""
    skip = pytest.mark.skipif(not _writable(), reason="cgroup v1 cpu/cpuacct/memory not writable")
    return pytest.mark.cgroups(skip(test))


BUSY = [sys.executable, "-c", "while True: pass"]


def _cores(run: RunCgroups, tier: str, seconds: float) -> tuple[float, int]:
    a = run.sample(tier)
    time.sleep(seconds)
    b = run.sample(tier)
    return (b.cpu_ns - a.cpu_ns) / 1e9 / (b.t - a.t), b.nr_throttled - a.nr_throttled





@pytest.fixture
def run(tmp_path):
    r = RunCgroups(state_dir=tmp_path)
    yield r
    r.remove()


def test_missing_hierarchy_is_a_one_line_error(tmp_path):
    with pytest.raises(LeanstackError, match="cgroup v1 hierarchy 'cpu' is not mounted") as e:
        check_available(tmp_path)
    assert "\n" not in str(e.value)
    with pytest.raises(LeanstackError, match="sim backend"):
        RunCgroups(root=tmp_path, state_dir=tmp_path)


@needs_cgroups
def test_quota_limits_a_busy_process_and_changes_live(run):
    run.create("busy", 0.2, weight=100_000)  # other jobs on this small machine barely dent it
    p = subprocess.Popen(BUSY, preexec_fn=die_with_parent(run.procs_files("busy")))
    try:
        time.sleep(0.3)
        assert run.pids("busy") == [p.pid]
        # Upper bounds are exact; lower bounds leave room for other jobs on this small machine.
        used, throttled = _cores(run, "busy", 1.5)
        assert 0.12 <= used <= 0.22
        assert throttled >= 5
        assert run.cpu_limit("busy") == pytest.approx(0.2)
        run.set_cpu("busy", 0.6)
        used, _ = _cores(run, "busy", 1.0)
        assert 0.26 <= used <= 0.66  # above the old cap: the new quota took effect at once
        assert run.sample("busy").memory_bytes > 0
    finally:
        p.kill()
        p.wait()


@needs_cgroups
def test_bad_cpu_is_rejected(run):
    run.create("t", 0.5)
    with pytest.raises(LeanstackError, match="must be above 0 cores"):
        run.set_cpu("t", 0.0)


@needs_cgroups
def test_remove_kills_processes_and_removes_cgroups(run):
    run.create("a", 1.0)
    p = subprocess.Popen(["sleep", "60"], preexec_fn=die_with_parent(run.procs_files("a")))
    run.remove()
    assert p.wait(timeout=5) == -signal.SIGKILL
    for h in cgroups.HIERARCHIES:
        assert not run.path(h, "a").parent.exists()
    assert not run.state_file.exists()


@needs_cgroups
def test_stale_run_of_a_dead_runner_is_cleaned_up(tmp_path):
    # A runner that creates a run, starts a child outside its own process tree, and is SIGKILLed.
    script = textwrap.dedent(f"""
        import json, subprocess, sys, time
        from pathlib import Path
        from leanstack.microservices.cgroups import RunCgroups
        r = RunCgroups(state_dir=Path({str(tmp_path)!r}))
        r.create("t", 0.5)
        p = subprocess.Popen(["sleep", "120"], start_new_session=True)
        time.sleep(0.2)
        r.add("t", p.pid)
        print(json.dumps({{"run_id": r.run_id, "pid": p.pid}}), flush=True)
        time.sleep(120)
    """)
    runner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    info = json.loads(runner.stdout.readline())
    runner.kill()
    runner.wait()
    stale_dir = cgroups.CGROUP_ROOT / "cpu" / cgroups.PARENT / info["run_id"]
    assert stale_dir.exists() and alive(info["pid"])  # no PDEATHSIG: it survived the runner
    live = RunCgroups(state_dir=tmp_path)  # a live run must survive the cleanup
    try:
        live.create("t", 0.5)
        removed = cleanup_stale_runs(state_dir=tmp_path)
        assert info["run_id"] in removed and live.run_id not in removed
        assert not stale_dir.exists()
        assert not (tmp_path / f"{info['run_id']}.json").exists()
        deadline = time.monotonic() + 5
        while alive(info["pid"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(info["pid"])
        assert live.path("cpu", "t").exists() and live.state_file.exists()
    finally:
        live.remove()


def test_children_die_with_their_parent():
    script = textwrap.dedent("""
        import subprocess, time
        from leanstack.microservices.cgroups import die_with_parent
        p = subprocess.Popen(["sleep", "120"], preexec_fn=die_with_parent())
        print(p.pid, flush=True)
        time.sleep(120)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    assert alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)


def test_runtime_dir_is_outside_the_repo():
    d = cgroups.runtime_dir()
    assert d.is_dir() and os.access(d, os.W_OK)
    assert Path(__file__).resolve().parents[2] not in d.resolve().parents


@needs_cgroups
def test_each_tier_weighs_like_one_process(run):
    run.create("a", 1.0)
    run.create("b", 0.5)
    run_dir = run.path("cpu", "a").parent
    assert int((run.path("cpu", "a") / "cpu.shares").read_text()) == 1024
    assert int((run_dir / "cpu.shares").read_text()) == 2048
    assert int((run_dir.parent / "cpu.shares").read_text()) >= 2048


def test_unwritable_hierarchy_is_a_one_line_error(tmp_path, monkeypatch):
    for h in ("cpu", "cpuacct", "memory"):
        (tmp_path / h).mkdir()
        (tmp_path / h / "cgroup.procs").write_text("")
    check_available(tmp_path)  # mounted and writable: fine
    monkeypatch.setattr("os.access", lambda path, mode: False)  # as a non-root user sees it
    with pytest.raises(LeanstackError, match="not writable — run as root") as e:
        check_available(tmp_path)
    assert "\n" not in str(e.value)
