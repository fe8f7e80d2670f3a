"""Seer's network: tier-count agnostic, learns a separable task, saves and loads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from leanstack.errors import LeanstackError
from leanstack.seer.campaign import Dataset, labels
from leanstack.seer.features import CHANNELS
from leanstack.seer.model import VARIANTS, SeerModel, SeerNet
from leanstack.seer.train import TrainConfig, score, split_episodes, train

C = {c: i for i, c in enumerate(CHANNELS)}


def synthetic(n_tiers: int, episodes: int = 60, windows: int = 40, seed: int = 0) -> Dataset:
    """Noise everywhere; in faulted episodes the culprit's own latency and queue wait climb
    from the fault's start, and QoS breaks 5 windows later."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.15, (episodes, windows, n_tiers, len(CHANNELS))).astype(np.float32)
    viol = np.zeros((episodes, windows), bool)
    culprit = np.full(episodes, -1)
    active = np.zeros((episodes, windows), bool)
    eps = []
    for e in range(episodes):
        fault = None
        if e % 4:
            c, s = int(rng.integers(n_tiers)), int(rng.integers(14, 24))
            ramp = np.clip(np.arange(windows - s) / 4.0, 0, 1.5)
            for ch in ("own_p50", "queue_wait", "inflight"):
                x[e, s:, c, C[ch]] += ramp
            x[e, s + 5:, :, C["e2e_sla"]] += 1.0
            viol[e, s + 5:] = True
            culprit[e], active[e, s:] = c, True
            fault = {"kind": "cpu_hog", "tier": f"t{c}", "start_s": float(s),
                     "duration_s": 20.0, "severity": 0.9, "ramp_s": 4.0}
        eps.append({"fault": fault})
    arrays = {"x": x, "violated": viol, "fault_active": active, "culprit": culprit,
              "label_violation": labels(viol, 5),
              "label_culprit": np.where(active, culprit[:, None], -1)}
    meta = {"app": f"synthetic-{n_tiers}", "tiers": [f"t{i}" for i in range(n_tiers)],
            "channels": list(CHANNELS), "interval_s": 1.0, "horizon_s": 5.0,
            "warmup_windows": 10, "episodes": eps}
    return Dataset(arrays, meta)


@pytest.mark.parametrize("variant", VARIANTS)
def test_any_number_of_tiers(variant):
    net = SeerNet(len(CHANNELS), variant)
    for n in (3, 11):
        v, k = net(torch.zeros(2, 10, n, len(CHANNELS)))
        assert v.shape == (2,) and k.shape == (2, n)


def test_tiny_model_beats_chance_on_a_separable_set(tmp_path):
    torch.set_num_threads(1)
    ds = synthetic(6)
    model, meta = train([ds], TrainConfig(epochs=12, stride=1, seed=0), progress=False)
    test = ds.subset(split_episodes(len(ds))["test"])
    p, c = score(model, test)
    lab = labels(test.arrays["violated"], 5)[:, 10:-5]
    ahead = ~test.arrays["violated"][:, 10:-5]  # what it learns: the onset, from before it
    pv = p[:, 10:-5]
    assert pv[lab & ahead].mean() > pv[~lab & ahead].mean() + 0.3
    # culprit: at windows where the fault is in force, the culprit ranks first far above 1/6
    act = test.arrays["fault_active"]
    e, t = np.nonzero(act[:, :-1] & (np.arange(act.shape[1] - 1) >= 10))
    hits = (c[e, t].argmax(axis=1) == test.arrays["culprit"][e]).mean()
    assert hits > 0.6
    # the model trained on 6 tiers runs on 9
    big = synthetic(9, episodes=8, seed=1)
    _, c9 = score(model, big)
    assert c9.shape[-1] == 9 and np.allclose(c9[:, 10:].sum(-1), 1.0, atol=1e-4)
    # round trip through the model directory, under 1 MB
    model.save(tmp_path / "m")
    again = SeerModel.load(tmp_path / "m")
    p2, _ = score(again, test)
    assert np.allclose(p, p2, atol=2e-2)
    assert sum(f.stat().st_size for f in (tmp_path / "m").iterdir()) < 1 << 20
    assert 0 < meta["threshold"] < 1 and meta["validation"]["violations"] > 0


def test_bad_model_dirs_and_variants(tmp_path):
    with pytest.raises(LeanstackError, match="no Seer model"):
        SeerModel.load(tmp_path)
    (tmp_path / "meta.json").write_text("{}")
    with pytest.raises(LeanstackError, match="cannot be read"):
        SeerModel.load(tmp_path)
    with pytest.raises(LeanstackError, match="variant"):
        SeerNet(len(CHANNELS), "transformer")


def test_deltas_and_onset_only_training_round_trip(tmp_path):
    torch.set_num_threads(1)
    net = SeerNet(len(CHANNELS), deltas=True)
    assert net.conv1.in_channels == 2 * len(CHANNELS)
    ds = synthetic(4, episodes=20)
    cfg = TrainConfig(epochs=2, deltas=True, violated_weight=0.0, seed=0)
    model, meta = train([ds], cfg, progress=False)
    assert meta["deltas"] is True and model.net.deltas
    model.save(tmp_path / "m")
    again = SeerModel.load(tmp_path / "m")
    assert again.net.deltas
    p1, _ = score(model, ds)
    p2, _ = score(again, ds)
    assert np.allclose(p1, p2, atol=2e-2)
