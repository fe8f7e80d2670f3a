"""Per-tier exploration on the simulator: points, stopping rules, the backpressure check, files."""

from __future__ import annotations

import json
import tomllib

import pytest

from leanstack.errors import LeanstackError
from leanstack.microservices.app import parse_app
from leanstack.microservices.sim import SimBackend
from leanstack.ursa.profile import AppProfile, ProfileSettings, TierProfile, profile_app

from .conftest import SHOP, shop


def test_each_tier_is_explored_until_its_latency_passes_the_bound(shop_profile):
    for name in ("front", "catalog"):
        tier = shop_profile.tiers[name]
        loads = [x for x, _ in tier.points]
        assert loads == sorted(loads) and len(loads) >= 3
        assert tier.stopped == "bound"
        assert tier.points[-1][1] > tier.bound_ms  # the last step is past the bound
        assert tier.points[0][1] < tier.bound_ms
    assert shop_profile.tiers["front"].bound_ms == pytest.approx(0.5 * 30)  # tightest SLA 30 ms
    assert shop_profile.collection_wall_s > 0 and shop_profile.collection_backend_s > 0


def test_latency_curve_is_the_running_maximum():
    tier = TierProfile("t", [(100.0, 2.0), (200.0, 1.5), (300.0, 8.0)], 10.0, "bound")
    xs, ys = tier.curve()
    assert list(xs) == [100.0, 200.0, 300.0]
    assert list(ys) == [2.0, 2.0, 8.0]  # a dip at higher load is noise, not a faster tier


def _blocking_app(kind: str):
    data = tomllib.loads(SHOP)
    data["services"]["cache"] = {"kind": kind, "max_cpu": 0.5, "op_cpu_ms": 2.0}
    return parse_app(data)


def test_backpressure_is_detected_for_a_caller_blocked_by_its_callee():
    settings = ProfileSettings(rps=150, tiers=["cache", "front"])
    blocked = profile_app(_blocking_app("memcached"), SimBackend(seed=1), settings,
                          progress=False)
    assert not blocked.tiers["front"].backpressure_free
    assert blocked.tiers["front"].slowed_by == ["cache"]
    free = profile_app(_blocking_app("redis"), SimBackend(seed=1), settings, progress=False)
    assert free.tiers["front"].backpressure_free


def test_profile_round_trips_and_bad_files_are_one_line(tmp_path, shop_profile):
    path = shop_profile.save(tmp_path / "p.json")
    again = AppProfile.load(path)
    assert again.tiers["front"].points == shop_profile.tiers["front"].points
    with pytest.raises(LeanstackError, match="no such Ursa profile"):
        AppProfile.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text(json.dumps({"app": "x"}))
    with pytest.raises(LeanstackError, match="not an Ursa profile"):
        AppProfile.load(tmp_path / "bad.json")


def test_unknown_tier_and_bad_load_are_rejected():
    with pytest.raises(LeanstackError, match="unknown tier 'nope'"):
        profile_app(shop(), SimBackend(), ProfileSettings(tiers=["nope"]), progress=False)
    with pytest.raises(LeanstackError, match="above 0"):
        profile_app(shop(), SimBackend(), ProfileSettings(rps=0), progress=False)
