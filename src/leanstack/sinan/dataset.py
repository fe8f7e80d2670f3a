"""Sinan's training data: collection runs with the bandit explorer, and the dataset file.

A dataset is one ``.npz`` file: arrays ``sys``, ``lat``, ``proposal``, ``y``, ``violation`` (see
``features``), ``run`` (which collection run each sample came from, so validation can hold out
whole runs) and ``meta``, a JSON string with the app, its tiers, the reference QoS, the runs'
loads and the collection cost (``collection_wall_s``, ``collection_sim_s``).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import Field, ValidationInfo, field_validator

from leanstack.atomic import write_npz
from leanstack.errors import LeanstackError
from leanstack.microservices.app import AppSpec
from leanstack.microservices.load import LoadSpec
from leanstack.microservices.runner import make_backend, run_experiment
from leanstack.schema import FileModel, NonNegative, Positive, check
from leanstack.sinan.explorer import BanditExplorer
from leanstack.sinan.features import (
    CHANNELS,
    PCT_KEYS,
    WINDOW,
    reference_qos_ms,
    samples_from_timeline,
)

ARRAYS = ("sys", "lat", "proposal", "y", "violation", "run")
LOAD_LEVELS = (0.25, 0.5, 0.75, 1.0, 1.25)
"""Steady collection loads as shares of the reference rate; one diurnal run is added."""


@dataclass
class Dataset:
    """Samples plus their metadata; ``arrays`` maps ARRAYS names to numpy arrays."""

    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]

    def __len__(self) -> int:
        return len(self.arrays["y"])

    def subset(self, mask: np.ndarray) -> Dataset:
        """The samples where ``mask`` is true."""
        return Dataset({k: v[mask] for k, v in self.arrays.items()}, self.meta)

    def save(self, path: str | Path) -> Path:
        """Write the dataset as one compressed .npz, atomically."""
        return write_npz(path, self.arrays, self.meta)

    @classmethod
    def load(cls, path: str | Path) -> Dataset:
        """Read a dataset written by :meth:`save`; its ``meta`` is checked against
        :class:`DatasetMeta` and its arrays' shapes against ``meta``."""
        p = Path(path)
        if not p.is_file():
            raise LeanstackError(f"dataset '{p}' not found — make one with "
                                 "'leanstack sinan collect --app APP --out FILE'")
        try:
            with np.load(p, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                arrays = {k: z[k] for k in ARRAYS}
        except (OSError, ValueError, KeyError, EOFError) as e:
            raise LeanstackError(f"'{p}' is not a Sinan dataset ({e}) — make one with "
                                 "'leanstack sinan collect'") from None
        if not isinstance(meta, dict):
            raise LeanstackError(f"{p}: meta: expected a JSON object — {REMAKE}")
        check(DatasetMeta, meta, f"{p}: meta", REMAKE)
        _check_shapes(arrays, len(meta["tiers"]), str(p))
        return cls(arrays, meta)


REMAKE = "make the dataset again with 'leanstack sinan collect'"


class DatasetMeta(FileModel):
    """The schema of a dataset's ``meta`` (see the module docstring)."""

    app: str
    tiers: Annotated[list[str], Field(min_length=1)]
    channels: list[str]
    percentiles: list[str]
    qos_ms: Positive
    backend: str = "sim"
    runs: list[dict[str, Any]] = []
    collection_wall_s: NonNegative = 0.0
    collection_sim_s: NonNegative = 0.0

    @field_validator("channels", "percentiles")
    @classmethod
    def _as_the_features_build(cls, v: list[str], info: ValidationInfo) -> list[str]:
        expected = CHANNELS if info.field_name == "channels" else PCT_KEYS
        if tuple(v) != expected:
            raise ValueError(f"expected {list(expected)}")
        return v


def _check_shapes(arrays: dict[str, np.ndarray], n_tiers: int, source: str) -> None:
    """Every array has one row per sample and the per-sample shape ``features`` builds."""
    n = len(arrays["y"])
    want = {"sys": (n, len(CHANNELS), n_tiers, WINDOW), "lat": (n, len(PCT_KEYS), WINDOW),
            "proposal": (n, n_tiers), "y": (n, len(PCT_KEYS)), "violation": (n,), "run": (n,)}
    for name, shape in want.items():
        if arrays[name].shape != shape:
            raise LeanstackError(f"{source}: array '{name}' has shape {arrays[name].shape}, "
                                 f"expected {shape} for {n_tiers} tiers — {REMAKE}")


def collection_loads(rps: float, duration_s: float, seed: int = 0,
                     levels: tuple[float, ...] = LOAD_LEVELS) -> list[LoadSpec]:
    """One Poisson run per level (share of ``rps``) and one diurnal run around ``rps``."""
    loads = [LoadSpec("poisson", rps * lv, duration_s, seed=seed + i)
             for i, lv in enumerate(levels)]
    loads.append(LoadSpec("diurnal", rps, duration_s, seed=seed + len(levels), amplitude=0.6))
    return loads


def collect(app: AppSpec, loads: list[LoadSpec], backend: str = "sim", seed: int = 0,
            progress: bool = True, backend_options: dict[str, Any] | None = None) -> Dataset:
    """Run the bandit explorer under each load on ``backend`` (built with ``backend_options``)
    and build the dataset.

    One explorer is shared by all runs, so its arm statistics accumulate as in the paper's
    long collection. ``collection_wall_s`` is the wall time of the runs themselves.
    """
    if not loads:
        raise LeanstackError("no collection loads given — pass at least one load level")
    backend_options = dict(backend_options or {})
    if backend_options:  # a bad option: one line before the first run
        make_backend(backend, 1.0, **backend_options)
    tiers = app.tiers
    explorer = BanditExplorer(seed=seed)
    parts: list[dict[str, np.ndarray]] = []
    runs: list[dict[str, Any]] = []
    wall = sim_s = 0.0
    with tempfile.TemporaryDirectory(prefix="sinan-collect-") as tmp:
        for i, load in enumerate(loads):
            opts = {"seed": seed + i} if backend == "sim" else {}
            be = make_backend(backend, 1.0, **{**opts, **backend_options})
            t0 = time.monotonic()
            result = run_experiment(app, be, explorer, load, Path(tmp) / f"run{i}.json",
                                    progress=progress)
            wall += time.monotonic() - t0
            sim_s += result["duration_s"]
            part = samples_from_timeline(result["timeline"], tiers)
            part["run"] = np.full(len(part["y"]), i, dtype=np.int16)
            parts.append(part)
            s = result["summary"]
            runs.append({"load": asdict(load), "samples": int(len(part["y"])),
                         "violation_rate": s["violation_rate"], "mean_cpu": s["mean_cpu"]})
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in ARRAYS}
    meta = {"app": app.name, "tiers": tiers, "channels": list(CHANNELS),
            "percentiles": list(PCT_KEYS), "qos_ms": reference_qos_ms(app),
            "backend": backend, "backend_options": backend_options, "runs": runs,
            "collection_wall_s": round(wall, 3), "collection_sim_s": sim_s,
            "explorer": explorer.describe()}
    return Dataset(arrays, meta)
