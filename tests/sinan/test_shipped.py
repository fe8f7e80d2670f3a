"""The models shipped for social network and hotel reservation, and the demo (slow)."""

from __future__ import annotations

import pytest

from leanstack.microservices.app import load_app
from leanstack.sinan.controller import SinanController
from leanstack.sinan.model import SinanModel, shipped_model_dir


@pytest.mark.parametrize("name", ["social-network", "hotel-reservation"])
def test_shipped_model_matches_its_app(name):
    app = load_app(name)
    model = SinanModel.load(shipped_model_dir(name))
    assert model.tiers == app.tiers
    assert model.meta["metrics"]["auc"] > 0.7  # held-out runs
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
