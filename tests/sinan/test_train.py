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


class _Oracle:
    """A stand-in model whose predictions are set by the test: evaluate's numbers are then known
    in advance."""

    meta = {"qos_ms": 40.0}

    def __init__(self, latency, probability) -> None:
        self.latency, self.probability = latency, probability

    def predict(self, sys, lat, proposal):
        return self.latency, self.probability


def test_evaluate_scores_known_predictions(tiny_dataset):
    from leanstack.sinan.features import P99, soft_clip
    from leanstack.sinan.train import evaluate

    a = tiny_dataset.arrays
    truth = soft_clip(a["y"])
    label = a["violation"].astype(bool)
    assert 0 < label.mean() < 1
    perfect = evaluate(_Oracle(truth, label.astype(float)), tiny_dataset)
    assert perfect["p99_rmse_qos"] == pytest.approx(0.0, abs=1e-6)
    assert perfect["auc"] == 1.0 and perfect["precision"] == 1.0 and perfect["recall"] == 1.0
    off = truth.copy()
    off[:, P99] += 0.25  # a quarter of the QoS too slow on every sample
    worse = evaluate(_Oracle(off, (~label).astype(float)), tiny_dataset)
    assert worse["p99_rmse_qos"] == pytest.approx(0.25, rel=1e-5)
    assert worse["p99_rmse_ms"] == pytest.approx(10.0, rel=1e-5)  # 0.25 x 40 ms
    assert worse["auc"] == 0.0 and worse["recall"] == 0.0
    assert worse["violation_share"] == pytest.approx(label.mean())
