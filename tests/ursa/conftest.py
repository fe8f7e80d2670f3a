"""Small apps and a shared simulator profile for Ursa's tests."""

from __future__ import annotations

import tomllib

import pytest

from leanstack.microservices.app import AppSpec, load_app, parse_app
from leanstack.microservices.sim import SimBackend
from leanstack.ursa.profile import AppProfile, ProfileSettings, profile_app

SHOP = """
name = "shop"
[services.front]
max_cpu = 1.0
[services.front.endpoints.browse]
work = "json"
cpu_ms = 0.5
calls = [["catalog.list", "cache.get"]]
[services.front.endpoints.buy]
work = "json"
cpu_ms = 0.8
calls = [["catalog.list"], ["orders.set"]]
[services.catalog]
max_cpu = 1.0
[services.catalog.endpoints.list]
work = "json"
cpu_ms = 1.0
[services.cache]
kind = "memcached"
client = "blocking"  # the shop keeps a blocking call in its trees: its own group, before catalog
max_cpu = 0.5
[services.orders]
kind = "redis"
max_cpu = 0.5
[classes.browse]
entry = "front.browse"
weight = 0.8
sla = { percentile = 99, ms = 30 }
[classes.buy]
entry = "front.buy"
weight = 0.2
sla = { percentile = 99, ms = 60 }
priority = 2
"""


def shop(**sla_ms: float) -> AppSpec:
    """The shop app, with class SLAs overridden by ``name=ms``."""
    data = tomllib.loads(SHOP)
    for name, ms in sla_ms.items():
        data["classes"][name]["sla"]["ms"] = ms
    return parse_app(data)


@pytest.fixture(scope="session")
def shop_profile() -> AppProfile:
    return profile_app(shop(), SimBackend(seed=3), ProfileSettings(rps=150), progress=False)


@pytest.fixture(scope="session")
def social() -> AppSpec:
    return load_app("social-network")
