"""cgroup v1 quotas really limit CPU, change live, and stale runs are cleaned up."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from tests._require import needs

from leanstack.errors import LeanstackError
from leanstack.microservices import cgroups
from leanstack.microservices.cgroups import (
    RunCgroups,
    check_available,
    cleanup_stale_runs,
    die_with_parent,
)

from .helpers import alive


def _cgroups_missing() -> list[str]:
    try:
        check_available()
    except LeanstackError:
        return ["writable cgroup v1 cpu/cpuacct/memory"]
    return []


def needs_cgroups(test):
    """Mark a test as needing writable cgroups: it fails in CI and skips loudly elsewhere
    when they are not."""
    return pytest.mark.cgroups(needs(_cgroups_missing, "run as root on a cgroup v1 host")(test))


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
def test_cfs_period_and_burst_are_set_per_run(tmp_path):
    run = RunCgroups(state_dir=tmp_path, period_us=20_000,
                     burst=0.5 if (cgroups.CGROUP_ROOT / "cpu" / "cpu.cfs_burst_us").exists()
                     else 0.0)
    try:
        run.create("t", 0.25)
        d = run.path("cpu", "t")
        assert (d / "cpu.cfs_period_us").read_text().strip() == "20000"
        assert (d / "cpu.cfs_quota_us").read_text().strip() == "5000"
        assert run.cpu_limit("t") == pytest.approx(0.25)
        if run.burst:
            assert (d / "cpu.cfs_burst_us").read_text().strip() == "2500"
            run.set_cpu("t", 0.05)  # the burst follows the quota down (never above it)
            assert (d / "cpu.cfs_burst_us").read_text().strip() == "500"
        run.set_cpu("t", 0.01)  # below 1 ms per 20 ms period: the kernel's floor
        assert run.cpu_limit("t") == pytest.approx(0.05)
    finally:
        run.remove()


@pytest.mark.parametrize(("period_us", "burst", "match"), [
    (500, 0.0, "outside the kernel's 1-1000 ms range"),
    (2_000_000, 0.0, "outside the kernel's"),
    (100_000, 1.5, "fraction of the quota in \\[0, 1\\]"),
])
def test_bad_cfs_settings_are_one_line_errors(period_us, burst, match):
    with pytest.raises(LeanstackError, match=match) as e:
        cgroups.check_cfs(period_us, burst, root=None)
    assert "\n" not in str(e.value)


def test_burst_without_kernel_support_is_refused(tmp_path):
    (tmp_path / "cpu").mkdir()
    with pytest.raises(LeanstackError, match="no cpu.cfs_burst_us"):
        cgroups.check_cfs(100_000, 0.5, root=tmp_path)
    cgroups.check_cfs(100_000, 0.0, root=tmp_path)  # no burst asked: fine


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


def _fake_hierarchies(root: Path) -> None:
    for h in cgroups.HIERARCHIES:
        (root / h / cgroups.PARENT).mkdir(parents=True)
        (root / h / "victim").mkdir()
        (root / h / "cgroup.procs").write_text("")


@pytest.mark.parametrize("stem", ["..", ".", "12-0123abcd.x", "..json", "1-abcdefgh"])
def test_cleanup_never_derives_a_path_from_a_crafted_state_file(tmp_path, stem):
    root, state = tmp_path / "cg", tmp_path / "state"
    _fake_hierarchies(root)
    state.mkdir()
    (state / f"{stem}.json").write_text("{}")  # a dead runner's state, as far as it says
    assert cleanup_stale_runs(root=root, state_dir=state) == []
    for h in cgroups.HIERARCHIES:  # the hierarchy roots and their other groups are untouched
        assert (root / h / "victim").is_dir() and (root / h / cgroups.PARENT).is_dir()


def test_cleanup_removes_a_stale_run_of_the_created_format(tmp_path):
    root, state = tmp_path / "cg", tmp_path / "state"
    _fake_hierarchies(root)
    state.mkdir()
    run_id = "999999999-0123abcd"  # no such PID
    for h in cgroups.HIERARCHIES:
        (root / h / cgroups.PARENT / run_id / "front").mkdir(parents=True)
    (state / f"{run_id}.json").write_text(json.dumps({"runner_pid": 999999999}))
    assert cleanup_stale_runs(root=root, state_dir=state) == [run_id]
    assert not any((root / h / cgroups.PARENT / run_id).exists() for h in cgroups.HIERARCHIES)
    assert all((root / h / "victim").is_dir() for h in cgroups.HIERARCHIES)
    with pytest.raises(LeanstackError, match="not a leanstack run id"):
        cgroups.check_run_id("..")


def test_runtime_dir_is_never_one_another_user_could_write(tmp_path):
    shared = tmp_path / "shared"
    (shared / "leanstack").mkdir(parents=True)
    (shared / "leanstack").chmod(0o777)  # anyone could plant state files here
    private = tmp_path / "private"
    private.mkdir()
    assert cgroups.runtime_dir((shared, private)) == private / "leanstack"
    with pytest.raises(LeanstackError, match="no private writable runtime directory"):
        cgroups.runtime_dir((shared,))
    if os.geteuid() == 0:  # a directory another user owns, even if private to them
        other = tmp_path / "other"
        (other / "leanstack").mkdir(parents=True)
        os.chown(other / "leanstack", 65534, 65534)
        assert cgroups.runtime_dir((other, private)) == private / "leanstack"


def test_local_backend_takes_cfs_options_from_the_command_line():
    from leanstack.microservices.runner import make_backend

    be = make_backend("local", 1.0, cfs_period_ms="20", cfs_burst="0")
    assert be.cfs_period_us == 20_000 and be.cfs_burst == 0.0
    with pytest.raises(LeanstackError, match="option 'cfs_period_ms' expects a number"):
        make_backend("local", 1.0, cfs_period_ms="fast")
    with pytest.raises(LeanstackError, match="outside the kernel's"):
        make_backend("local", 1.0, cfs_period_ms="0.5")
    with pytest.raises(LeanstackError, match="backend 'sim' has no option 'cfs_period_ms'"):
        make_backend("sim", 1.0, cfs_period_ms="20")


def test_cleanup_removes_a_dead_runs_scratch_dir_and_nothing_else(tmp_path):
    import tempfile

    root, state = tmp_path / "cg", tmp_path / "state"
    _fake_hierarchies(root)
    state.mkdir()
    ours = Path(tempfile.mkdtemp(prefix="leanstack-local-"))
    (ours / "front.log").write_text("a dead run's log")
    theirs = Path(tempfile.mkdtemp(prefix="someone-else-"))
    outside = tmp_path / "leanstack-local-outside"  # not in the system temp dir
    outside.mkdir()
    link = Path(tempfile.gettempdir()) / f"leanstack-link-{os.getpid()}"
    link.symlink_to(theirs)
    try:
        for i, d in enumerate([ours, theirs, outside, link]):
            (state / f"99999999{i}-0123abcd.json").write_text(
                json.dumps({"runner_pid": 999999999, "scratch_dir": str(d)}))
        assert len(cleanup_stale_runs(root=root, state_dir=state)) == 4
        assert not ours.exists()
        assert theirs.is_dir() and outside.is_dir() and link.is_symlink()
        assert list(state.iterdir()) == []
    finally:
        link.unlink(missing_ok=True)
        theirs.rmdir()
        shutil.rmtree(ours, ignore_errors=True)  # only if the clean-up failed


def test_only_a_temp_leanstack_dir_can_be_left_to_cleanup(run, tmp_path):
    with pytest.raises(LeanstackError, match="not a leanstack-\\* directory"):
        run.own_scratch_dir(tmp_path)
