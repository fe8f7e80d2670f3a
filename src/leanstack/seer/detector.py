"""Seer online: stream observations through the model, raise alerts, boost the culprit.

:class:`SeerDetector` implements the substrate's Detector contract. Each interval it turns the
observation into a feature row, runs the model on the last ``lookback`` rows once the warm-up
is over, and raises an :class:`~leanstack.microservices.detector.Alert` once P(violation)
reaches the model's threshold, holding it until P falls below half of it. When acting,
``adjust`` gives the named culprit ``boost`` x its CPU (and a logic tier as many workers as that
needs, one core each) on top of whatever the controller decided, and hands it back ``hold_s``
seconds after the last alert naming it. With a ``boost_threshold`` below the alert threshold it
boosts the most likely culprit as soon as P(violation) reaches that (earlier, at more CPU),
while alerts are still raised at the model's threshold.
"""

from __future__ import annotations

import math
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from leanstack.errors import LeanstackError
from leanstack.microservices.app import AppSpec
from leanstack.microservices.detector import Alert
from leanstack.microservices.observation import Allocation, Observation
from leanstack.seer.features import FeatureExtractor
from leanstack.seer.metrics import CLEAR_RATIO
from leanstack.seer.model import SeerModel

WARMUP = 10


class SeerDetector:
    """The Seer detector (``--detector seer``); ``act=False`` only watches."""

    name = "seer"

    def __init__(self, model: str | Path | SeerModel | None = None, act: bool = True,
                 boost: float = 2.0,
                 hold_s: float = 5.0, threshold: float | None = None,
                 top: int = 5, boost_threshold: float | None = None) -> None:
        if not boost >= 1.0:
            raise LeanstackError(f"detector boost must be at least 1 (x CPU), got {boost}")
        if not hold_s >= 0:
            raise LeanstackError(f"detector hold_s must be >= 0 seconds, got {hold_s}")
        self.model = model if isinstance(model, SeerModel) else SeerModel.load(model)
        self.model_dir = None if isinstance(model, SeerModel) else model
        self.act = act
        self.boost = boost
        self.hold_s = hold_s
        self.threshold = self.model.threshold if threshold is None else float(threshold)
        self.boost_threshold = (self.threshold if boost_threshold is None
                                else float(boost_threshold))
        if not 0 < self.boost_threshold <= 1:
            raise LeanstackError(f"detector boost_threshold must be in (0, 1], got "
                                 f"{boost_threshold}")
        self.top = top
        self.inference_ms: list[float] = []

    def reset(self, app: AppSpec, interval_s: float) -> None:
        self.app = app
        self.tiers = list(app.services)
        self.interval_s = interval_s
        self._fx = FeatureExtractor(self.tiers, WARMUP)
        self._rows: deque[np.ndarray] = deque(maxlen=self.model.lookback)
        self._seen = 0
        self._hold = max(1, math.ceil(self.hold_s / interval_s))
        self.boosted: dict[str, int] = {}  # tier -> windows left before handing it back
        self.last: tuple[float, np.ndarray] | None = None  # (P(violation), culprit dist)
        self.alerting = False  # raised at the threshold, held down to CLEAR_RATIO of it
        self.inference_ms = []

    def update(self, observation: Observation) -> list[Alert]:
        """Feature the window, score it, and return the alert it raises (if any)."""
        self._rows.append(self._fx.push(observation))
        self._seen += 1
        for tier in list(self.boosted):
            self.boosted[tier] -= 1
            if self.boosted[tier] <= 0:
                del self.boosted[tier]
        if self._seen < max(WARMUP, self.model.lookback):
            return []
        t0 = time.perf_counter()
        p, c = self.model.predict(np.stack(self._rows)[None])
        self.inference_ms.append((time.perf_counter() - t0) * 1e3)
        self.last = (float(p[0]), c[0])
        self.alerting = p[0] >= self.threshold * (CLEAR_RATIO if self.alerting else 1.0)
        order = np.argsort(-c[0], kind="stable")
        culprit = self.tiers[int(order[0])]
        if self.alerting or p[0] >= self.boost_threshold:
            self.boosted[culprit] = self._hold
        if not self.alerting:
            return []
        ranking = {self.tiers[int(i)]: round(float(c[0][i]), 4) for i in order[:self.top]}
        return [Alert(observation.t, round(float(p[0]), 4), culprit,
                      round(float(c[0][order[0]]), 4), ranking)]

    def adjust(self, allocation: Allocation) -> Allocation:
        """The controller's allocation with every boosted tier's CPU raised."""
        if not self.act:
            return allocation
        for tier in self.boosted:
            ta = allocation.tiers[tier]
            svc = self.app.services[tier]
            cpu = ta.cpu * self.boost
            replicas = ta.replicas
            if svc.scalable:  # a worker uses one core at most: add workers only when needed
                replicas = max(replicas, math.ceil(cpu - 1e-9))
            if svc.is_storage:
                cpu = min(cpu, max(ta.cpu, 1.0))
            allocation = allocation.with_tier(tier, cpu=round(cpu, 6), replicas=replicas)
        return allocation

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "act": self.act, "boost": self.boost, "hold_s": self.hold_s,
                "threshold": self.threshold, "boost_threshold": self.boost_threshold,
                "model": str(self.model_dir or "shipped"),
                "lookback": self.model.lookback, "horizon_s": self.model.meta["horizon_s"]}
