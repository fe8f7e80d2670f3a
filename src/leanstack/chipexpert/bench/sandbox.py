"""Run an untrusted tool invocation (iverilog, vvp, yosys, ngspice) boxed and with limits.

The command runs in new mount and network namespaces (``unshare``, util-linux): its working
directory is bind-mounted onto itself, then every other mount is remounted read-only, so the
tool can write nothing outside that directory (``/tmp`` is a private tmpfs that vanishes with
the namespace) and reach no network. Inside, ``ulimit`` caps CPU seconds, file size and address
space; stdout and stderr go to files in the working directory; on timeout the whole process
group is killed. Where namespaces cannot be made (no root and no unprivileged user namespaces)
the run is refused with a one-line error.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from leanstack.errors import LeanstackError

MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_MEMORY_KB = 4 * 1024 * 1024
OUTPUT_CHARS = 20_000  # how much of stdout/stderr is read back

# Runs as `sh -c BOX_SCRIPT sh CMD...` inside the namespaces, with $BOX the working directory:
# bind it onto itself and enter it, remount every other mount read-only (keeping its other flags:
# a user namespace may not drop nosuid/nodev), give /tmp a private tmpfs that vanishes with the
# namespace (ngspice's tmpfile() ignores TMPDIR; the working directory stays open under it), then
# apply the limits and exec the tool.
BOX_SCRIPT = r"""
mount --make-rprivate / || exit 125
mount --bind "$BOX" "$BOX" && cd "$BOX" || exit 125
while read -r _ _ _ _ point opts _; do
  point=$(printf '%b' "$point")
  [ "$point" = "$BOX" ] && continue
  case ",$opts," in *,ro,*) continue ;; esac
  mount -o "remount,bind,ro,${opts#rw,}" "$point" 2>/dev/null || exit 125
done < /proc/self/mountinfo
mount -t tmpfs -o size=64m,mode=1777,nosuid,nodev tmpfs /tmp || exit 125
ulimit -t "$CPU_S"; ulimit -f "$FILE_BLOCKS"; ulimit -v "$MEM_KB"
exec "$@"
"""
BOX_FAILED = 125  # the exit status BOX_SCRIPT uses when the box could not be made


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


@functools.cache
def unshare_prefix() -> tuple[str, ...]:
    """The ``unshare`` command that opens the namespaces (mapping the caller to root in a user
    namespace when not root); a one-line error when this machine cannot make them."""
    if shutil.which("unshare") is None:
        raise LeanstackError("the checker sandbox needs 'unshare' (util-linux); install it")
    prefix = ("unshare", "--mount", "--net", "--propagation", "private")
    if os.geteuid() != 0:
        prefix += ("--map-root-user",)
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        why = (probe.stderr.strip().splitlines() or ["no message"])[-1]
        raise LeanstackError(f"cannot make the checker sandbox ({why}); run as root or enable "
                             "unprivileged user namespaces (sysctl kernel.unprivileged_userns_"
                             "clone=1)")
    return prefix


def run_limited(cmd: list[str], cwd: Path, timeout_s: float) -> RunResult:
    """Run ``cmd`` in ``cwd`` for at most ``timeout_s`` seconds (wall clock and CPU), able to
    write only inside ``cwd``."""
    box = str(Path(cwd).resolve())
    env = {**os.environ, "BOX": box, "TMPDIR": "/tmp",
           "CPU_S": str(max(1, int(timeout_s) + 1)), "FILE_BLOCKS": str(MAX_FILE_BYTES // 512),
           "MEM_KB": str(MAX_MEMORY_KB)}
    out_path, err_path = cwd / ".stdout", cwd / ".stderr"
    t0 = time.perf_counter()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen([*unshare_prefix(), "/bin/sh", "-c", BOX_SCRIPT, "sh", *cmd],
                                cwd=box, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=err, start_new_session=True)
        try:
            proc.wait(timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_group(proc.pid)
            proc.wait()
    seconds = time.perf_counter() - t0
    if proc.returncode == BOX_FAILED and not timed_out:
        raise LeanstackError(f"could not make the read-only box for {cmd[0]} (a mount was "
                             "refused); run as root or in a user namespace that allows remounts")
    return RunResult(None if timed_out else proc.returncode, _read(out_path), _read(err_path),
                     timed_out, seconds)


def _kill_group(pgid: int) -> None:
    """SIGKILL every process left in the group (children a tool may have spawned)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _read(path: Path) -> str:
    with open(path, "rb") as f:
        return f.read(OUTPUT_CHARS).decode(errors="replace")
