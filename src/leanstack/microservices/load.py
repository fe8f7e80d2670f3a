"""Open-loop load patterns: when each request is scheduled and which class it belongs to.

The same schedule drives the simulator and the real load generator, so both see identical
arrivals for the same :class:`LoadSpec` and seed.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leanstack.errors import LeanstackError

PATTERNS = ("constant", "poisson", "diurnal", "step", "trace")

MAX_REQUESTS = 5e7
"""The most requests one run may schedule (their arrival times alone take 400 MB)."""


@dataclass(frozen=True)
class LoadSpec:
    """An arrival process with mean rate ``rps`` over ``duration_s`` seconds.

    - ``constant``: evenly spaced arrivals.
    - ``poisson``: exponential gaps.
    - ``diurnal``: Poisson with rate ``rps * (1 - amplitude * cos(2 pi t / period_s))``: a trough
      at the start, the peak half a period in (a day compressed into ``period_s``).
    - ``step``: Poisson at ``rps * (1 - amplitude)`` for the first half, ``rps * (1 + amplitude)``
      for the second.
    - ``trace``: Poisson following per-second rates from ``trace`` (a file with one rate per line,
      or ``t,rate`` lines), rescaled so its mean is ``rps``; repeated if shorter than the run.
    """

    pattern: str = "poisson"
    rps: float = 100.0
    duration_s: float = 60.0
    seed: int = 0
    amplitude: float = 0.5
    period_s: float | None = None
    trace: str | None = None

    def __post_init__(self) -> None:
        if self.pattern not in PATTERNS:
            raise LeanstackError(f"unknown load pattern '{self.pattern}' — use one of "
                                 f"{', '.join(PATTERNS)}")
        if not (self.rps > 0 and math.isfinite(self.rps)):
            raise LeanstackError(f"--rps must be above 0, got {self.rps}")
        if not (self.duration_s > 0 and math.isfinite(self.duration_s)):
            raise LeanstackError(f"--duration must be above 0 seconds, got {self.duration_s}")
        if self.rps * self.duration_s > MAX_REQUESTS:
            raise LeanstackError(f"--rps {self.rps:g} for {self.duration_s:g} s is "
                                 f"{self.rps * self.duration_s:.3g} requests; one run takes at "
                                 f"most {MAX_REQUESTS:.0e} — lower --rps or --duration")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise LeanstackError(f"--seed must be a whole number >= 0, got {self.seed}")
        if self.period_s is not None and not (self.period_s > 0 and math.isfinite(self.period_s)):
            raise LeanstackError(f"load period must be above 0 seconds, got {self.period_s}")
        if not 0 <= self.amplitude < 1:
            raise LeanstackError(f"load amplitude must be in [0, 1), got {self.amplitude}")
        if self.pattern == "trace" and not self.trace:
            raise LeanstackError("the trace pattern needs a trace file — pass --trace FILE")

    def rate(self, t: np.ndarray | float) -> np.ndarray:
        """Scheduled arrival rate (requests/s) at time(s) ``t``."""
        t = np.asarray(t, dtype=float)
        if self.pattern == "diurnal":
            period = self.period_s or self.duration_s
            return self.rps * (1 - self.amplitude * np.cos(2 * math.pi * t / period))
        if self.pattern == "step":
            return np.where(t < self.duration_s / 2, self.rps * (1 - self.amplitude),
                            self.rps * (1 + self.amplitude))
        if self.pattern == "trace":
            rates = _trace_rates(self.trace, self.rps)
            return rates[np.floor(t).astype(int) % len(rates)]
        return np.full_like(t, self.rps)

    def arrival_times(self) -> np.ndarray:
        """Scheduled send times in seconds from the start, sorted, all below ``duration_s``."""
        rng = np.random.default_rng(self.seed)
        if self.pattern == "constant":
            return np.arange(0.0, self.duration_s, 1.0 / self.rps)
        if self.pattern == "poisson":
            n = rng.poisson(self.rps * self.duration_s)
            return np.sort(rng.uniform(0.0, self.duration_s, n))
        # Non-homogeneous Poisson: per 10 ms bin, a Poisson count at the bin's rate.
        dt = 0.01
        starts = np.arange(0.0, self.duration_s, dt)
        counts = rng.poisson(self.rate(starts + dt / 2) * dt)
        times = np.repeat(starts, counts) + rng.uniform(0.0, dt, counts.sum())
        return np.sort(times[times < self.duration_s])


def assign_classes(weights: dict[str, float], n: int, seed: int = 0) -> list[str]:
    """Draw the request class of each of ``n`` arrivals from the mix ``weights``."""
    names = list(weights)
    p = np.array([weights[k] for k in names], dtype=float)
    idx = np.random.default_rng(seed + 1).choice(len(names), size=n, p=p / p.sum())
    return [names[i] for i in idx]


@functools.lru_cache(maxsize=8)
def _trace_rates(path: str | None, mean_rps: float) -> np.ndarray:
    p = Path(path or "")
    if not p.is_file():
        raise LeanstackError(f"trace file '{path}' not found — pass a file of per-second rates")
    rates = []
    for i, line in enumerate(p.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            rates.append(float(line.split(",")[-1]))
        except ValueError:
            raise LeanstackError(f"{p}:{i}: expected a rate or 't,rate', got {line!r} — "
                                 "fix that line") from None
    arr = np.array(rates, dtype=float)
    if arr.size == 0 or arr.min() < 0 or arr.sum() == 0:
        raise LeanstackError(f"{p}: needs at least one positive per-second rate and none "
                             "negative — fix the trace file")
    return arr * (mean_rps / arr.mean())
