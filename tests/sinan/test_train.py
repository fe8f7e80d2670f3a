"""Training: held-out runs, the model's shape and size, saving and loading."""

from __future__ import annotations

import numpy as np
import pytest

from leanstack.errors import LeanstackError
from leanstack.sinan.model import LatencyCNN, SinanModel
from leanstack.sinan.train import split_runs


def test_split_holds_out_whole_runs():
    run = np.repeat(np.arange(8), 10)
    m = split_runs(run)
    assert set(run[m["test"]]) == {3, 7} and set(run[m["early_stop"]]) == {1, 5}
    assert set(run[m["train"]]) == {0, 2, 4, 6}
    assert not (m["train"] & m["test"]).any()
    tiny = split_runs(np.repeat(np.arange(2), 5))
    assert set(np.repeat(np.arange(2), 5)[tiny["test"]]) == {1}
    with pytest.raises(LeanstackError, match="one collection run"):
        split_runs(np.zeros(10, dtype=int))


def test_cnn_has_the_papers_size():
    n = sum(p.numel() for p in LatencyCNN(24).parameters())
    assert 28_000 < n < 36_000


def test_trained_model_metrics_and_round_trip(tiny_model, tiny_dataset):
    path, model, metrics = tiny_model
    assert metrics["samples"] == int((tiny_dataset.arrays["run"] == 2).sum())
    assert metrics["p99_rmse_ms"] == pytest.approx(metrics["p99_rmse_qos"] * 40.0)
    back = SinanModel.load(path)
    a = tiny_dataset.arrays
    p1, v1 = model.predict(a["sys"][:7], a["lat"][:7], a["proposal"][:7])
    p2, v2 = back.predict(a["sys"][:7], a["lat"][:7], a["proposal"][:7])
    assert p1.shape == (7, 5) and v1.shape == (7,)
    assert np.allclose(p1, p2, atol=1e-5) and np.allclose(v1, v2, atol=1e-6)
    assert ((v1 >= 0) & (v1 <= 1)).all()
    size = sum(f.stat().st_size for f in path.iterdir())
    assert size < 5 << 20


def test_unreadable_model_is_a_one_line_error(tmp_path):
    with pytest.raises(LeanstackError, match="meta.json missing.*sinan train"):
        SinanModel.load(tmp_path)
    (tmp_path / "meta.json").write_text('{"tiers": ["a"]}')
    with pytest.raises(LeanstackError, match="cannot be read"):
        SinanModel.load(tmp_path)
