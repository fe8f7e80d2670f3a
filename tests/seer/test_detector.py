"""The detector hook: alerts go into the result, the culprit is boosted and handed back."""

from __future__ import annotations

import math

import numpy as np
import pytest

from leanstack.errors import LeanstackError
from leanstack.microservices.controllers import StaticController
from leanstack.microservices.detector import make_detector
from leanstack.microservices.load import LoadSpec
from leanstack.microservices.runner import make_backend, run_experiment
from leanstack.seer.detector import SeerDetector
from leanstack.seer.features import CHANNELS
from leanstack.seer.model import SeerModel, SeerNet


class ScriptedModel(SeerModel):
    """Says "violation ahead, tier ``culprit``" for windows ending in [on, off) seconds (and
    a weak 0.3 for those ending in [early, on))."""

    def __init__(self, tiers, culprit, on, off, early=None):
        super().__init__(SeerNet(len(CHANNELS)), {"lookback": 10, "threshold": 0.5,
                                                  "horizon_s": 5.0, "lead_s": 2.0})
        self.tiers, self.culprit, self.on, self.off = tiers, culprit, on, off
        self.t = 0
        self.early = on if early is None else early

    def predict(self, x):
        self.t += 1
        end = self.t + 9  # window t ends at t + 10 s
        p = 0.9 if self.on <= end < self.off else 0.3 if self.early <= end < self.on else 0.1
        c = np.full(len(self.tiers), 0.01)
        c[self.tiers.index(self.culprit)] = 1.0
        return np.array([p]), (c / c.sum())[None]


def _run(app, tmp_path, act):
    tiers = list(app.services)
    det = SeerDetector(ScriptedModel(tiers, "search", on=20, off=24), act=act, hold_s=3.0)
    res = run_experiment(app, make_backend("sim", 1.0, seed=1), StaticController(),
                         LoadSpec("poisson", 200.0, 40.0, seed=1), tmp_path / "r.json",
                         progress=False, detector=det)
    return res, det


def test_detector_boosts_the_named_tier_and_hands_back(app, tmp_path):
    res, det = _run(app, tmp_path, act=True)
    tl = res["timeline"]
    alerted = [e["t"] for e in tl if e["alerts"]]
    assert alerted == [20.0, 21.0, 22.0, 23.0]
    assert all(e["alerts"][0]["culprit"] == "search" for e in tl if e["alerts"])
    base = app.services["search"].max_cpu
    cpu = {e["t"]: e["allocation"]["search"]["cpu"] for e in tl}
    # the allocation recorded at t is the one in force during the interval ending at t
    assert cpu[20.0] == base and cpu[21.0] == 2 * base
    reps = app.services["search"].replicas
    assert tl[20]["allocation"]["search"]["replicas"] == max(reps, math.ceil(2 * base))
    assert cpu[26.0] == 2 * base and cpu[28.0] == base  # held 3 s after the last alert
    others = [n for n in app.services if n != "search"]
    assert all(e["allocation"][n] == tl[0]["allocation"][n] for e in tl for n in others)
    assert res["settings"]["detector"]["name"] == "seer"


def test_a_lower_boost_threshold_boosts_before_the_alert(app, tmp_path):
    tiers = list(app.services)
    det = SeerDetector(ScriptedModel(tiers, "search", on=20, off=24, early=16), act=True,
                       hold_s=3.0, boost_threshold=0.25)
    res = run_experiment(app, make_backend("sim", 1.0, seed=1), StaticController(),
                         LoadSpec("poisson", 200.0, 40.0, seed=1), tmp_path / "r.json",
                         progress=False, detector=det)
    tl = res["timeline"]
    assert [e["t"] for e in tl if e["alerts"]] == [20.0, 21.0, 22.0, 23.0]  # alerts unchanged
    base = app.services["search"].max_cpu
    cpu = {e["t"]: e["allocation"]["search"]["cpu"] for e in tl}
    assert cpu[16.0] == base and cpu[17.0] == 2 * base  # boosted from P >= 0.25 on
    assert res["settings"]["detector"]["boost_threshold"] == 0.25
    with pytest.raises(LeanstackError, match="boost_threshold"):
        SeerDetector(ScriptedModel(tiers, "search", 0, 0), boost_threshold=0.0)


def test_watch_only_detector_never_changes_the_allocation(app, tmp_path):
    res, _ = _run(app, tmp_path, act=False)
    tl = res["timeline"]
    assert sum(bool(e["alerts"]) for e in tl) == 4
    assert all(e["allocation"] == tl[0]["allocation"] for e in tl)


def test_detector_registry_errors():
    with pytest.raises(LeanstackError, match="unknown detector"):
        make_detector("oracle")
    with pytest.raises(LeanstackError, match="no option"):
        make_detector("seer", wings=2)
    with pytest.raises(LeanstackError, match="boost"):
        SeerDetector(ScriptedModel(["a"], "a", 0, 0), boost=0.5)
