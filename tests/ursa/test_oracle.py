"""The oracle search: meets the target, respects tier bounds, and is locally minimal."""

from __future__ import annotations

from leanstack.microservices.load import LoadSpec
from leanstack.ursa.oracle import search_oracle, violation_rate_at

from .conftest import shop


def test_oracle_is_feasible_and_locally_minimal():
    app = shop()
    load = LoadSpec("poisson", 150, 40, seed=1)
    res = search_oracle(app, load, target=0.0, precision=0.05, seed=1, progress=False)
    assert res.violation_rate == 0.0
    assert res.total_cpu < 0.5 * sum(s.max_cpu for s in app.services.values())
    squeezed = 0
    for name, t in res.allocation.tiers.items():
        svc = app.services[name]
        assert svc.min_cpu <= t.cpu <= svc.max_cpu
        if t.cpu > 1.5 * svc.min_cpu:  # not at its floor: 30% less must break the SLA
            less = res.allocation.with_tier(name, cpu=t.cpu * 0.7)
            assert violation_rate_at(app, less, load, seed=1) > 0.0, name
            squeezed += 1
    assert squeezed >= 2  # front and catalog are above their floors
