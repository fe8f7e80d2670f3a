"""The experiment runner: deploy an app on a backend, drive load, let a controller act, record it.

One run is ``deploy(initial allocation) -> start(load) -> (observe -> decide -> set_allocation)
per control interval -> close``; the backend is closed whatever happens (an exception in the
controller, Ctrl-C). The result is an ExperimentResult JSON (:mod:`result`) and, optionally, an
HTML report (:mod:`report`) and the run's spans as OTLP JSON lines.
"""

from __future__ import annotations

import inspect
import math
import os
import time
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from leanstack.atomic import write_bytes, write_json
from leanstack.errors import LeanstackError
from leanstack.microservices.app import AppSpec
from leanstack.microservices.backend import Backend
from leanstack.microservices.controller import Controller
from leanstack.microservices.detector import Detector
from leanstack.microservices.load import LoadSpec
from leanstack.microservices.observation import Observation, Span
from leanstack.microservices.result import (
    build_result,
    environment,
    interval_violated,
)
from leanstack.registry import checked_options, load_target

BACKENDS: dict[str, str] = {
    "sim": "leanstack.microservices.sim:SimBackend",
    "local": "leanstack.microservices.local:LocalBackend",
    "k8s": "leanstack.microservices.k8s.backend:KubernetesBackend",
}
"""Backend name -> ``"module:class"``; imported only when that backend is asked for."""


def make_backend(name: str, interval_s: float = 1.0, **opts: Any) -> Backend:
    """Build a backend by name; options set to ``None`` keep the backend's default."""
    if name not in BACKENDS:
        raise LeanstackError(f"unknown backend '{name}' — use one of {', '.join(BACKENDS)}")
    if not (interval_s > 0 and math.isfinite(interval_s)):
        raise LeanstackError(f"--interval must be above 0 seconds, got {interval_s}")
    cls = load_target(BACKENDS[name], f"backend '{name}'")
    opts = checked_options(f"backend '{name}'", cls, opts)
    accepted = inspect.signature(cls).parameters
    for k in opts:
        default = accepted[k].default
        if isinstance(opts[k], str) and isinstance(default, int | float) \
                and not isinstance(default, bool):  # a number given on the command line
            try:
                opts[k] = float(opts[k])
            except ValueError:
                raise LeanstackError(f"backend '{name}' option '{k}' expects a number, got "
                                     f"{opts[k]!r} — e.g. --backend-opt {k}={default}") from None
    return cls(interval_s=interval_s, **opts)


def local_unavailable() -> str | None:
    """``None`` when real processes under cgroup limits can run here, else the reason why not."""
    try:
        from leanstack.microservices.cgroups import check_available

        check_available()
        make_backend("local")  # fails early when the local backend is not installed
    except (LeanstackError, ImportError) as e:
        return str(e)
    return None


def run_experiment(app: AppSpec, backend: Backend, controller: Controller, load: LoadSpec,
                   out_json: str | Path, report_html: str | Path | None = None,
                   progress: bool = True, spans_out: str | Path | None = None,
                   detector: Detector | None = None) -> dict[str, Any]:
    """Run ``controller`` on ``app`` under ``load``; write and return the ExperimentResult.

    The run lasts ``load.duration_s`` (rounded to whole control intervals). On Ctrl-C the
    backend is closed, a partial result (``"completed": false``) is written, and the
    KeyboardInterrupt propagates. ``spans_out`` writes the backend's spans as OTLP JSON lines.
    A ``detector`` sees each observation after the controller decided; its alerts go into the
    timeline and its ``adjust`` has the last word on the allocation.
    """
    for path in (out_json, report_html, spans_out):
        if path is not None:
            _check_writable(Path(path))
    steps = max(1, round(load.duration_s / backend.interval_s))
    timeline: list[dict[str, Any]] = []
    wall0 = time.monotonic()

    def result(completed: bool) -> dict[str, Any]:
        settings = {"controller": controller.describe(), "load": _load_settings(load),
                    "steps": steps}
        if detector is not None:
            settings["detector"] = detector.describe()
        return build_result(app.name, backend.name, controller.name, backend.interval_s,
                            timeline, settings, environment(time.monotonic() - wall0),
                            completed=completed)

    try:
        allocation = controller.reset(app, backend.interval_s)
        if detector is not None:
            detector.reset(app, backend.interval_s)
        backend.deploy(app, allocation)
        backend.start(load)
        history: list[Observation] = []
        measured = violated = 0
        with _progress(progress) as bar:
            task = bar.add_task(f"{app.name} · {backend.name} · {controller.name}", total=steps,
                                stats="")
            for _ in range(steps):
                obs = backend.observe()
                history.append(obs)
                timeline.append({**obs.to_dict(), "allocation": allocation.to_dict()})
                t0 = time.perf_counter()
                new = controller.decide(history, allocation)
                if detector is not None:
                    timeline[-1]["alerts"] = [a.to_dict() for a in detector.update(obs)]
                    new = detector.adjust(new)
                timeline[-1]["decision_ms"] = (time.perf_counter() - t0) * 1e3
                if new != allocation:
                    backend.set_allocation(new)
                    allocation = new
                verdict = interval_violated(timeline[-1])
                measured += verdict is not None
                violated += bool(verdict)
                stats = (f"t={obs.t:.0f}s  cpu={allocation.total_cpu():.2f}  "
                         f"violations={violated / max(measured, 1):.0%}")
                bar.update(task, advance=1, stats=stats)
        if spans_out is not None:
            write_spans(backend.spans(0), spans_out)
    except KeyboardInterrupt:
        backend.close()
        write_json(out_json, result(completed=False))
        raise
    finally:
        backend.close()
    data = result(completed=True)
    write_json(out_json, data)
    if report_html is not None:
        from leanstack.microservices.report import write_report

        write_report(data, report_html)
    return data


def write_spans(spans: list[Span], path: str | Path) -> Path:
    """Write spans as OTLP JSON lines to a temporary file, then rename it to ``path``."""
    return write_bytes(path, "".join(s.to_otlp() + "\n" for s in spans).encode())


def read_spans(path: str | Path) -> list[Span]:
    """Read an OTLP JSON-lines span file written by :func:`write_spans`."""
    path = Path(path)
    if not path.is_file():
        raise LeanstackError(f"{path}: no such span file — record one with "
                             "'leanstack micro run ... --spans FILE.jsonl'")
    spans = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            spans.append(Span.from_otlp(line))
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise LeanstackError(f"{path}:{i}: not an OTLP span line ({e!r}) — pass a file "
                                 "written by 'leanstack micro run --spans'") from None
    if not spans:
        raise LeanstackError(f"{path}: holds no spans — record a run with --spans first")
    return spans


def _check_writable(path: Path) -> None:
    """Fail before the run, not after it, when an output cannot be written."""
    if path.is_dir():
        raise LeanstackError(f"{path} is a directory — give a file name for the output")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LeanstackError(f"cannot create {path.parent} ({e.strerror}) — choose another "
                             "output path") from None
    if not os.access(path.parent, os.W_OK):
        raise LeanstackError(f"{path.parent} is not writable — choose another output path")


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("{task.fields[stats]}"),
                    disable=not enabled, transient=False)


def _load_settings(load: LoadSpec) -> dict[str, Any]:
    return {"pattern": load.pattern, "rps": load.rps, "duration_s": load.duration_s,
            "seed": load.seed, "amplitude": load.amplitude, "period_s": load.period_s,
            "trace": Path(load.trace).name if load.trace else None}
