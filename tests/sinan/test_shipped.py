"""The models shipped for social network and hotel reservation, and the demo (slow)."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import roc_auc_score

from leanstack.microservices.app import load_app
from leanstack.sinan.controller import SinanController
from leanstack.sinan.dataset import collect, collection_loads
from leanstack.sinan.model import SinanModel, shipped_model_dir


@pytest.mark.parametrize("name", ["social-network", "hotel-reservation"])
def test_shipped_model_predicts_violations_on_fresh_runs(name):
    """The AUC is measured here, on collection runs with seeds no training run used (training
    used seeds below 200 — 100 per repeat), not read from the model's own metadata."""
    torch.set_num_threads(1)
    app = load_app(name)
    model = SinanModel.load(shipped_model_dir(name))
    assert model.tiers == app.tiers
    fresh = collect(app, collection_loads(600.0, 40.0, seed=1000, levels=(1.0, 1.25)),
                    progress=False)
    a = fresh.arrays
    _, p_violation = model.predict(a["sys"], a["lat"], a["proposal"])
    labels = a["violation"]
    assert 0 < labels.mean() < 1  # both outcomes occur, so the AUC means something
    assert roc_auc_score(labels, p_violation) > 0.8
    assert p_violation[labels == 1].mean() > p_violation[labels == 0].mean()
    SinanController().reset(app, 1.0)  # no --opt model: the shipped one


def test_no_shipped_model_for_other_apps():
    from leanstack.errors import LeanstackError

    with pytest.raises(LeanstackError, match="sinan train"):
        SinanController().reset(load_app("video-pipeline"), 1.0)


@pytest.mark.slow
def test_demo_writes_three_results(tmp_path, capsys):
    from leanstack.sinan.demo import run_demo

    run_demo(tmp_path)
    out = capsys.readouterr().out
    assert "| sinan |" in out and "| hpa |" in out
    assert len(list(tmp_path.glob("sinan-demo-*.json"))) == 3
