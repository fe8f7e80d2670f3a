"""Run an untrusted tool invocation (iverilog, vvp, yosys, ngspice) with limits.

The command runs in its own process group under ``sh -c 'ulimit ...; exec ...'`` (CPU seconds,
file size, address space), with stdout and stderr going to files in the working directory; on
timeout the whole group is killed. This bounds runaway simulations; it is not a security sandbox
(no namespaces), so run the benchmark on answers from models you are willing to run code from.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_MEMORY_KB = 4 * 1024 * 1024
OUTPUT_CHARS = 20_000  # how much of stdout/stderr is read back


@dataclass(frozen=True)
class RunResult:
    """Outcome of one limited run; ``returncode`` is None when it was killed for the timeout."""

    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    seconds: float

    @property
    def ok(self) -> bool:
        """Finished in time with exit status 0."""
        return not self.timed_out and self.returncode == 0


def run_limited(cmd: list[str], cwd: Path, timeout_s: float) -> RunResult:
    """Run ``cmd`` in ``cwd`` for at most ``timeout_s`` seconds (wall clock and CPU)."""
    cpu_s = max(1, int(timeout_s) + 1)
    limits = (f"ulimit -t {cpu_s}; ulimit -f {MAX_FILE_BYTES // 512}; "
              f"ulimit -v {MAX_MEMORY_KB}; exec \"$@\"")
    out_path, err_path = cwd / ".stdout", cwd / ".stderr"
    t0 = time.perf_counter()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(["/bin/sh", "-c", limits, "sh", *cmd], cwd=cwd,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                start_new_session=True)
        try:
            proc.wait(timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_group(proc.pid)
            proc.wait()
    seconds = time.perf_counter() - t0
    return RunResult(None if timed_out else proc.returncode, _read(out_path), _read(err_path),
                     timed_out, seconds)


def _kill_group(pgid: int) -> None:
    """SIGKILL every process left in the group (children a tool may have spawned)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _read(path: Path) -> str:
    with open(path, "rb") as f:
        return f.read(OUTPUT_CHARS).decode(errors="replace")
