"""Shared fixtures of the Seer tests: a tiny fault campaign on the simulator."""

from __future__ import annotations

import pytest
import torch

from leanstack.microservices.app import load_app
from leanstack.seer.campaign import Dataset, collect

APP = "hotel-reservation"


@pytest.fixture(scope="session")
def app():
    return load_app(APP)


@pytest.fixture(scope="session")
def tiny_dataset(app) -> Dataset:
    """Eight 40 s episodes (a few wall seconds)."""
    torch.set_num_threads(1)
    return collect(app, 8, seed=2, duration_s=40.0)
