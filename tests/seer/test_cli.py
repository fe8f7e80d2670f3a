"""``leanstack seer ...`` end to end on tiny campaigns, and its one-line errors."""

from __future__ import annotations

import json

import pytest
from tests.microservices.helpers import run_cli

from leanstack.seer.campaign import Dataset
from leanstack.seer.model import MODELS_DIR, SeerModel


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A dataset from 'seer collect' and a model from 'seer train' (1 epoch)."""
    d = tmp_path_factory.mktemp("seer-cli")
    mp = pytest.MonkeyPatch()

    class Cap:  # run_cli wants capsys; module fixtures cannot have it
        def readouterr(self):
            return "", ""

    code, _, _ = run_cli(mp, Cap(), "seer", "collect", "--app", "hotel-reservation",
                         "--episodes", "5", "--duration", "40", "--seed", "3",
                         "--controller", "hpa", "--out", str(d / "data.npz"), "--quiet")
    assert code == 0
    code, _, _ = run_cli(mp, Cap(), "seer", "train", "--data", str(d / "data.npz"),
                         "--out", str(d / "model"), "--epochs", "1", "--quiet")
    assert code == 0
    mp.undo()
    return d


def test_collect_train_eval(trained, monkeypatch, capsys):
    meta = json.loads((trained / "model" / "meta.json").read_text())
    assert meta["apps"] == ["hotel-reservation"] and "test" in meta
    assert meta["campaigns"] == [{"app": "hotel-reservation", "controller": "hpa", "seed": 3,
                                  "episodes": 5}]
    data = Dataset.load(trained / "data.npz").meta
    assert data["controller"] == "hpa" and {e["controller"] for e in data["episodes"]} == {"hpa"}
    out = trained / "r.json"
    code, stdout, _ = run_cli(monkeypatch, capsys, "seer", "eval", "--app", "social-network",
                              "--model", str(trained / "model"), "--episodes", "2",
                              "--seed", "5", "--out", str(out), "--quiet")
    assert code == 0, stdout
    r = json.loads(out.read_text())
    for key in ("anticipation", "precision", "culprit_top1", "culprit_top3", "avoided",
                "lead_time_s", "episodes", "false_alerts_per_hour", "mean_cpu_with"):
        assert key in r
    assert r["episodes"] == 2 and len(r["per_episode"]) == 2
    assert "violations avoided" in stdout


def test_inject_records_ground_truth_and_explain_reads_it(trained, monkeypatch, capsys):
    out = trained / "inj.json"
    code, stdout, _ = run_cli(monkeypatch, capsys, "seer", "inject", "--app",
                              "hotel-reservation", "--kind", "cpu_hog", "--tier", "search",
                              "--start", "12", "--length", "10", "--duration", "30",
                              "--out", str(out))
    assert code == 0, stdout
    r = json.loads(out.read_text())
    assert r["faults"][0]["tier"] == "search" and r["faults"][0]["kind"] == "cpu_hog"
    png = trained / "explain.png"
    code, stdout, _ = run_cli(monkeypatch, capsys, "seer", "explain", "--result", str(out),
                              "--app", "hotel-reservation", "--model", str(trained / "model"),
                              "--at", "20", "--out", str(png))
    assert code == 0, stdout
    assert "| tier |" in stdout and png.stat().st_size > 1000
    code, stdout, _ = run_cli(monkeypatch, capsys, "seer", "watch", "--app",
                              "hotel-reservation", "--model", str(trained / "model"),
                              "--result", str(out))
    assert code == 0 and "watching hotel-reservation" in stdout


@pytest.mark.parametrize("args,message", [
    (["train", "--data", "nope.npz", "--out", "m"], "no such dataset"),
    (["eval", "--app", "social-network", "--model", "nowhere", "--out", "r.json"],
     "no Seer model"),
    (["inject", "--app", "social-network", "--kind", "cpu_hog", "--tier", "atlantis",
      "--out", "r.json"], "not in app"),
    (["collect", "--app", "social-network", "--kinds", "meteor"], "unknown fault kind"),
    (["collect", "--app", "social-network", "--controller", "ursa"], "static or hpa"),
    (["collect", "--app", "social-network", "--ramp", "slow"], "LOW,HIGH seconds"),
    (["collect", "--app", "social-network", "--ramp", "9,3"], "0 < low <= high"),
    (["inject", "--app", "social-network", "--kind", "edge_delay", "--tier", "text",
      "--caller", "nginx", "--out", "r.json"], "does not call"),
])
def test_bad_input_is_one_line(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(monkeypatch, capsys, "seer", *args)
    assert code != 0
    text = out + err
    assert message in text and "Traceback" not in text


@pytest.mark.skipif(not (MODELS_DIR / "default" / "meta.json").is_file(),
                    reason="no shipped model yet")
def test_shipped_model_is_small_and_drives_micro_run(tmp_path, monkeypatch, capsys):
    assert sum(f.stat().st_size for f in (MODELS_DIR / "default").iterdir()) < 1 << 20
    model = SeerModel.load()
    assert 0 < model.threshold < 1
    out = tmp_path / "r.json"
    code, stdout, _ = run_cli(monkeypatch, capsys, "micro", "run", "--app", "social-network",
                              "--controller", "hpa", "--detector", "seer", "--duration", "20",
                              "--rps", "300", "--out", str(out), "--quiet")
    assert code == 0, stdout
    r = json.loads(out.read_text())
    assert r["settings"]["detector"]["name"] == "seer"
    assert all("alerts" in e for e in r["timeline"])
