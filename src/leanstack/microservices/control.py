"""Controller as a service: the control loop against a running app, with no load generator.

``leanstack micro control --backend k8s --controller ursa ...`` points a controller at an app that
already serves real traffic (on Kubernetes: an adopted deployment, or one applied for the run):
each interval it observes, lets the controller decide, and applies the new allocation. The
timeline is written as an ExperimentResult JSON after every interval (so a service that is
stopped leaves its record), and the backend is closed whatever happens.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from leanstack.atomic import write_json
from leanstack.microservices.app import AppSpec
from leanstack.microservices.backend import Backend
from leanstack.microservices.controller import Controller
from leanstack.microservices.observation import Observation
from leanstack.microservices.result import build_result, environment


def control(app: AppSpec, backend: Backend, controller: Controller, out_json: str | Path,
            duration_s: float | None = None, log: Console | None = None) -> dict[str, Any]:
    """Run ``controller`` on ``backend`` for ``duration_s`` seconds (``None``: until Ctrl-C or
    SIGTERM); return the ExperimentResult written to ``out_json``."""
    steps = None if duration_s is None else max(1, round(duration_s / backend.interval_s))
    timeline: list[dict[str, Any]] = []
    wall0 = time.monotonic()
    completed = False
    old_sigterm = None
    if threading.current_thread() is threading.main_thread():  # SIGTERM -> SystemExit: cleanup
        old_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)

    def write() -> dict[str, Any]:
        settings = {"controller": controller.describe(), "mode": "control",
                    "steps": len(timeline)}
        data = build_result(app.name, backend.name, controller.name, backend.interval_s,
                            timeline, settings, environment(time.monotonic() - wall0),
                            completed=completed)
        write_json(out_json, data)
        return data

    try:
        allocation = controller.reset(app, backend.interval_s)
        backend.deploy(app, allocation)
        backend.start(None)
        history: list[Observation] = []
        while steps is None or len(timeline) < steps:
            obs = backend.observe()
            history.append(obs)
            timeline.append({**obs.to_dict(), "allocation": allocation.to_dict()})
            t0 = time.perf_counter()
            new = controller.decide(history, allocation)
            timeline[-1]["decision_ms"] = (time.perf_counter() - t0) * 1e3
            if new != allocation:
                backend.set_allocation(new)
                allocation = new
            if log is not None:
                rps = sum(c.throughput_rps for c in obs.classes.values())
                log.print(f"t={obs.t:.0f}s  {rps:.1f} req/s  cpu={allocation.total_cpu():.2f}")
            write()
        completed = True
    finally:
        backend.close()
        if old_sigterm is not None:
            signal.signal(signal.SIGTERM, old_sigterm)
    return write()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
