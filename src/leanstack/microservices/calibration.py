"""The calibration file: the simulator's service-time model as JSON, its schema, save and load.

Written by :mod:`~leanstack.microservices.calibrate` (which fits it from a real run) and read by
the simulator; this module depends on neither, so neither depends on the other's import.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from leanstack.atomic import write_bytes
from leanstack.errors import LeanstackError
from leanstack.schema import FileModel, Finite, NonNegative, Positive, check

VERSION = 1
DISTRIBUTIONS = ("gamma", "lognormal", "constant")
RPC_KEYS = ("callee_ms", "caller_ms", "storage_caller_ms")
RPC_OPTIONAL = ("delay_ms", "entry_ms", "entry_cv")  # fitted only from observations

DEFAULT_RPC = {"callee_ms": 0.3, "caller_ms": 0.2, "storage_caller_ms": 0.08, "delay_ms": 0.0,
               "entry_ms": 0.0, "entry_cv": 0.0}
"""RPC overheads when no calibration is given: CPU at the callee per request, at the caller per
call to a logic tier and per storage operation, the wall-time delay of every call, and the
client's own share of each request's latency (mean and coefficient of variation of a gamma: the
load generator's HTTP client and the entry tier's HTTP server outside its span)."""

HOW = "re-run `leanstack micro calibrate`"


class Distribution(FileModel):
    dist: Literal["gamma", "lognormal", "constant"]
    mean_ms: Positive
    cv: NonNegative


class Rpc(FileModel):
    model_config = {"extra": "forbid"}

    callee_ms: NonNegative | None = None
    caller_ms: NonNegative | None = None
    storage_caller_ms: NonNegative | None = None
    delay_ms: NonNegative | None = None
    entry_ms: NonNegative | None = None
    entry_cv: NonNegative | None = None


class TierCorrection(FileModel):
    extra_ms: Finite = 0.0
    idle_cpu: NonNegative = 0.0


class CalibrationFile(FileModel):
    """The schema of a calibration file (see :mod:`~leanstack.microservices.calibrate`)."""

    version: Literal[1]
    app: str
    rpc: Rpc
    endpoints: dict[str, Distribution]
    storage: dict[str, Distribution]
    tiers: dict[str, TierCorrection] = {}
    host_cores: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None


def check_calibration(model: Any, where: str = "calibration") -> None:
    """Raise a one-line LeanstackError naming the first malformed part of ``model``."""
    if not isinstance(model, dict):
        raise LeanstackError(f"{where}: top level: expected a JSON object — {HOW}")
    check(CalibrationFile, model, where, HOW)


def save_calibration(model: dict[str, Any], path: str | Path) -> None:
    """Write ``model`` as JSON to ``path`` (checked first; a temp file renamed into place)."""
    check_calibration(model, str(path))
    write_bytes(path, (json.dumps(model, indent=1, sort_keys=True) + "\n").encode())


SHIPPED_DIR = Path(__file__).parent / "calibrations"
SHIPPED = "shipped"
"""The ``calibration`` value that selects the app's shipped calibration (:func:`shipped_path`)."""


def shipped_path(app_name: str) -> Path:
    """The calibration shipped for ``app_name``: fitted to the static-maximum run of the app as
    real processes on a 2-core machine (``<app>-local.json``); a one-line error if none ships."""
    path = SHIPPED_DIR / f"{app_name}-local.json"
    if not path.is_file():
        have = sorted(p.name.removesuffix("-local.json") for p in SHIPPED_DIR.glob("*-local.json"))
        raise LeanstackError(f"no calibration ships for app '{app_name}' (shipped: "
                             f"{', '.join(have)}) — fit one with `leanstack micro calibrate`")
    return path


def load_calibration(path: str | Path) -> dict[str, Any]:
    """Read and validate a calibration file; a bad one is a one-line LeanstackError."""
    path = Path(path)
    if not path.is_file():
        raise LeanstackError(f"calibration file '{path}' not found — run `leanstack micro "
                             "calibrate` to make one")
    try:
        model = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LeanstackError(f"{path}: not valid JSON ({e}) — {HOW}") from None
    check_calibration(model, str(path))
    return model


def rescaled(model: dict[str, Any], factor: float) -> dict[str, Any]:
    """``model`` for the same app on a machine ``factor`` times slower: every time in it (the
    operations, the RPC overheads and delays, the client's share, the tiers' extras) and every
    tier's idle CPU multiplied by ``factor``; shapes (CVs) and the host's cores kept. For
    comparing a run made while the machine's speed had moved with what the model predicts at
    that speed (``factor``: the run's CPU for the same work over the calibration run's)."""
    if not (isinstance(factor, int | float) and 0 < factor < float("inf")):
        raise LeanstackError(f"a calibration's speed factor must be a number above 0, got "
                             f"{factor!r}")
    check_calibration(model)
    out = json.loads(json.dumps(model))
    for table in (out["endpoints"], out["storage"]):
        for d in table.values():
            d["mean_ms"] *= factor
    for key, v in out["rpc"].items():
        if key.endswith("_ms") and v is not None:
            out["rpc"][key] = v * factor
    for t in out.get("tiers", {}).values():
        for key in ("extra_ms", "idle_cpu"):
            if key in t:
                t[key] *= factor
    return out
