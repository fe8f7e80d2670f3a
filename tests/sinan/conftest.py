"""A tiny collected dataset and a tiny trained model, shared by the Sinan tests."""

from __future__ import annotations

import pytest
import torch

from leanstack.microservices.app import load_app
from leanstack.sinan.dataset import Dataset, collect, collection_loads
from leanstack.sinan.train import TrainConfig, train

APP = "hotel-reservation"


@pytest.fixture(scope="session")
def app():
    return load_app(APP)


@pytest.fixture(scope="session")
def tiny_dataset(app) -> Dataset:
    """Three 25 s collection runs (tens of simulated seconds, a few wall seconds)."""
    torch.set_num_threads(1)
    loads = collection_loads(500.0, 25.0, seed=0, levels=(0.5, 1.0))
    return collect(app, loads, progress=False)


@pytest.fixture(scope="session")
def tiny_model(tiny_dataset, tmp_path_factory):
    """A model trained for a few epochs on the tiny dataset, saved to a directory."""
    model, metrics = train(tiny_dataset, TrainConfig(epochs=3, xgb_rounds=30), progress=False)
    out = tmp_path_factory.mktemp("sinan-model")
    model.save(out, explain={k: tiny_dataset.arrays[k][:16] for k in ("sys", "lat", "proposal")})
    return out, model, metrics
