"""The online controller: decision rule on a stub model, model checks, and a real sim run."""

from __future__ import annotations

import numpy as np
import pytest

from leanstack.errors import LeanstackError
from leanstack.microservices.controllers import make_controller
from leanstack.microservices.load import LoadSpec
from leanstack.microservices.observation import Allocation, ClassStats, Observation, TierStats
from leanstack.microservices.runner import make_backend, run_experiment
from leanstack.sinan.controller import SinanController
from leanstack.sinan.features import P99


class StubModel:
    """Predicts from the proposal alone: unsafe when any tier is below ``need`` cores."""

    def __init__(self, tiers, need=0.0, hold_prob=0.0, always_unsafe=False):
        self.tiers = tiers
        self.need = need
        self.always_unsafe = always_unsafe
        self.meta = {"app": "hotel-reservation", "tiers": tiers}
        self.calls = 0

    def predict(self, sys_x, lat_x, proposal):
        self.calls += 1
        unsafe = (proposal < self.need - 1e-9).any(axis=1) | self.always_unsafe
        pred = np.full((len(proposal), 5), 0.2, dtype=np.float32)
        pred[:, P99] = np.where(unsafe, 1.5, 0.3)
        return pred, np.where(unsafe, 0.9, 0.01)


def history(app, n=6, rps=300.0, used=0.1):
    classes = {c: ClassStats(completed=100, latency_ms={"p99": 5.0}, sla_ms=s.sla.ms)
               for c, s in app.classes.items()}
    return [Observation(t=i + 1, interval_s=1.0, classes=classes, offered_rps=rps,
                        tiers={n: TierStats(cpu_limit=app.services[n].max_cpu, cpu_used=used)
                               for n in app.services}) for i in range(n)]


def controller_with(app, stub):
    c = SinanController()
    c._model, c._app = stub, app
    return c


def test_first_seconds_at_max_then_cheapest_safe_scale_down(app):
    stub = StubModel(app.tiers)
    c = controller_with(app, stub)
    top = Allocation.static_max(app)
    assert c.decide(history(app, 3), top) == top and stub.calls == 0
    new = c.decide(history(app), top)
    assert stub.calls == 1  # every candidate in one batch
    assert new.total_cpu() < top.total_cpu()
    assert c.describe()["choices"] == {"down": 1}
    # the cheapest passing candidate: every tier down one step
    assert new.total_cpu() == pytest.approx(top.total_cpu() - 0.1 * len(app.tiers))


def test_unsafe_everywhere_goes_to_max_and_rising_load_blocks_downs(app):
    c = controller_with(app, StubModel(app.tiers, always_unsafe=True))
    cur = Allocation({n: t.__class__(0.4, t.replicas)
                      for n, t in Allocation.static_max(app).tiers.items()})
    assert c.decide(history(app), cur) == Allocation.static_max(app)
    c = controller_with(app, StubModel(app.tiers))
    h = history(app)
    h[-1].offered_rps = 400.0  # load rising by a third: no scale-down, hold
    assert c.decide(h, cur) == cur


def test_utilisation_floor_protects_busy_tiers(app):
    c = controller_with(app, StubModel(app.tiers))
    top = Allocation.static_max(app)
    assert c.decide(history(app, used=0.1), top) != top
    # every tier above 75% busy: each floor (cpu * util / 0.75) is above its max, so no move
    assert c.decide(history(app, used=0.9), top) == top


def test_missing_and_mismatched_models(app, tiny_model, tmp_path):
    with pytest.raises(LeanstackError, match="sinan train"):
        SinanController(model=str(tmp_path)).reset(app, 1.0)
    from leanstack.microservices.app import load_app

    other = load_app("social-network")
    with pytest.raises(LeanstackError, match="trained for app 'hotel-reservation'.*sinan"):
        SinanController(model=str(tiny_model[0])).reset(other, 1.0)


def test_registry_option_and_a_real_run(app, tiny_model, tmp_path):
    ctrl = make_controller("sinan", model=str(tiny_model[0]))
    r = run_experiment(app, make_backend("sim", 1.0, seed=3), ctrl,
                       LoadSpec("poisson", 250.0, 15.0, seed=3), tmp_path / "r.json",
                       progress=False)
    s = r["summary"]
    assert s["intervals"] == 15 and s["decision_ms_median"] is not None
    assert r["settings"]["controller"]["candidates_last_step"] > len(app.tiers)
    first = r["timeline"][0]["allocation"]
    assert sum(t["cpu"] for t in first.values()) == Allocation.static_max(app).total_cpu()
