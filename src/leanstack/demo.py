"""``leanstack demo``: one section per part, each on embedded defaults, each telling where its
files went. A section that cannot run here says why and the others still run."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from leanstack.errors import LeanstackError
from leanstack.registry import load_target

SECTIONS: dict[str, tuple[str, str]] = {
    "micro": ("leanstack.microservices.demo:run_demo",
              "the social network on real processes, managed by Kubernetes HPA"),
    "ursa": ("leanstack.ursa.demo:run_demo", "Ursa on the same app and load, side by side"),
    "sinan": ("leanstack.sinan.demo:run_demo", "Sinan's learned controller on the simulator"),
    "seer": ("leanstack.seer.demo:run_demo", "Seer: a QoS violation anticipated, its culprit "
             "named and boosted (simulator)"),
    "kv": ("leanstack.leankv.demo:run_demo", "LeanKV: a long-prompt question, with and without "
           "KV compression"),
    "chip": ("leanstack.chipexpert.demo:run_demo", "ChipExpert: answers with citations"),
}
"""Section name -> (``"module:function"``, what it shows), in the order they run."""

console = Console()


def run(sections: list[str], out_dir: Path, **options: Any) -> list[str]:
    """Run ``sections`` in order; return the names of those that failed."""
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise LeanstackError(f"unknown demo section(s) {', '.join(unknown)} — use "
                             f"{', '.join(SECTIONS)}")
    failed = []
    for name in sections:
        target, what = SECTIONS[name]
        console.rule(f"[bold]{name}[/bold]: {what}")
        t0 = time.monotonic()
        try:
            fn = _load(target)
            section_dir = out_dir / name
            section_dir.mkdir(parents=True, exist_ok=True)
            kwargs = _accepted(fn, {**options, "hpa_result": out_dir / "micro" / "result.json"})
            fn(section_dir, **kwargs)
        except LeanstackError as e:
            console.print(f"[red]{name} failed:[/red] {e}", highlight=False, soft_wrap=True)
            failed.append(name)
            continue
        console.print(f"[dim]{name} took {time.monotonic() - t0:.0f} s[/dim]")
    return failed


def _load(target: str) -> Callable[..., Any]:
    return load_target(target, "this section")


def _accepted(fn: Callable[..., Any], options: dict[str, Any]) -> dict[str, Any]:
    params = inspect.signature(fn).parameters
    return {k: v for k, v in options.items() if k in params and v is not None}
