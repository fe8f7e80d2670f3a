"""Run a design against its testbench with Icarus Verilog in the checker sandbox, and remember
the outcome (keyed by a hash of both texts) so rebuilding the training data does not re-run it."""

from __future__ import annotations

import hashlib
import json
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from leanstack.atomic import write_json
from leanstack.chipexpert.bench.sandbox import run_limited

TIMEOUT_S = 10.0


@dataclass(frozen=True)
class SimOutcome:
    """Whether the design passed (compiled, printed PASS and no FAIL) and a short reason."""

    passed: bool
    detail: str


def simulate(design: str, testbench: str, timeout_s: float = TIMEOUT_S) -> SimOutcome:
    """Compile ``design`` with ``testbench`` (top ``tb``) and run it, sandboxed."""
    with tempfile.TemporaryDirectory(prefix="chiptrain-v-") as tmp:
        d = Path(tmp)
        (d / "design.v").write_text(design)
        (d / "tb.v").write_text(testbench)
        comp = run_limited(["iverilog", "-g2012", "-o", "sim.vvp", "-s", "tb", "tb.v",
                            "design.v"], d, timeout_s)
        if not comp.ok:
            first = (comp.stderr or comp.stdout or "no output").strip().splitlines()[0]
            return SimOutcome(False, "does not compile: " + first[:160])
        sim = run_limited(["vvp", "-n", "sim.vvp"], d, timeout_s)
    if sim.timed_out:
        return SimOutcome(False, f"simulation killed after {timeout_s:g} s")
    if "FAIL" in sim.stdout or "PASS" not in sim.stdout:
        line = next((ln for ln in sim.stdout.splitlines() if "FAIL" in ln), "no PASS printed")
        return SimOutcome(False, "testbench: " + line.strip()[:160])
    return SimOutcome(True, "PASS")


class SimCache:
    """Outcomes of earlier runs in a JSON file; ``run_many`` simulates only what is new."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.entries: dict[str, dict] = {}
        if path is not None and path.is_file():
            try:
                self.entries = json.loads(path.read_text())
            except ValueError:
                self.entries = {}  # a damaged cache is rebuilt
        self.runs = 0

    @staticmethod
    def key(design: str, testbench: str) -> str:
        """The cache key of one (design, testbench) pair."""
        return hashlib.sha256(f"{design}\0{testbench}".encode()).hexdigest()

    def run_many(self, pairs: list[tuple[str, str]], workers: int = 2,
                 on_done: Callable[[], None] | None = None) -> list[SimOutcome]:
        """Outcomes of every (design, testbench) pair, in order; ``on_done()`` after each."""
        def one(pair: tuple[str, str]) -> SimOutcome:
            k = self.key(*pair)
            hit = self.entries.get(k)
            if hit is None:
                out = simulate(*pair)
                with self._lock:
                    self.entries[k] = {"passed": out.passed, "detail": out.detail}
                    self.runs += 1
                hit = self.entries[k]
            if on_done is not None:
                on_done()
            return SimOutcome(hit["passed"], hit["detail"])

        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(one, pairs))
        if self.path is not None:
            write_json(self.path, self.entries)
        return results
