"""Helpers several microservice test modules share."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from leanstack import cli


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run ``leanstack ARGS`` in-process; return (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["leanstack", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def local_missing() -> list[str]:
    """What the local backend needs and this machine lacks: writable cgroup v1 hierarchies
    (root), ``redis-server`` and ``memcached``. Empty when it can run."""
    from leanstack.errors import LeanstackError
    from leanstack.microservices import cgroups
    from leanstack.microservices.storage import BINARIES

    missing = [b for b in BINARIES.values() if shutil.which(b) is None]
    try:
        cgroups.check_available()
    except LeanstackError:
        missing.insert(0, "writable cgroup v1 cpu/cpuacct/memory (root)")
    return missing


LOCAL_HOW = "run as root on a host with cgroup v1 and scripts/system-deps.sh installed"
