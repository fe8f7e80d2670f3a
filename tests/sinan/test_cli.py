"""``leanstack sinan`` commands, in-process, on tiny settings, and their one-line errors."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from leanstack.sinan.cli import sinan_app

runner = CliRunner()


def test_collect_train_explain(tmp_path, tiny_dataset):
    r = runner.invoke(sinan_app, ["collect", "--app", "hotel-reservation", "--duration", "12",
                                  "--rps", "200", "--out", str(tmp_path / "d.npz"), "--quiet"])
    assert r.exit_code == 0, r.output
    assert "6 runs" in r.output and (tmp_path / "d.npz").is_file()
    data = tiny_dataset.save(tmp_path / "tiny.npz")
    model = tmp_path / "model"
    r = runner.invoke(sinan_app, ["train", "--data", str(data), "--out", str(model),
                                  "--epochs", "2", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "held-out runs" in r.output and (model / "explain.npz").is_file()
    assert json.loads((model / "meta.json").read_text())["collection_backend"] == "sim"
    r = runner.invoke(sinan_app, ["explain", "--model", str(model), "--out",
                                  str(tmp_path / "e.png"), "--json", str(tmp_path / "e.json")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "e.png").read_bytes()[:4] == b"\x89PNG"
    expl = json.loads((tmp_path / "e.json").read_text())
    top = max(expl["per_tier"], key=expl["per_tier"].get)
    assert "| tier |" in r.output and f"| {top} |" in r.output
    assert set(expl["per_tier"]) == set(tiny_dataset.meta["tiers"])
    assert all(v >= 0 for v in expl["per_tier"].values())


def test_bad_inputs_are_leanstack_errors(tmp_path):
    from leanstack.errors import LeanstackError

    r = runner.invoke(sinan_app, ["train", "--data", str(tmp_path / "no.npz"), "--out",
                                  str(tmp_path / "m")])
    assert isinstance(r.exception, LeanstackError) and "sinan collect" in str(r.exception)
    r = runner.invoke(sinan_app, ["collect", "--app", "no-such-app", "--quiet"])
    assert isinstance(r.exception, LeanstackError) and "unknown app" in str(r.exception)
    r = runner.invoke(sinan_app, ["explain", "--model", str(tmp_path)])
    assert isinstance(r.exception, LeanstackError) and "sinan train" in str(r.exception)


def test_collect_refuses_runs_too_short_for_a_sample_and_bad_backend_options(tmp_path):
    from leanstack.errors import LeanstackError

    out = tmp_path / "d.npz"
    for argv, words in ((["--duration", "8"], "gives no training sample"),
                        (["--backend-opt", "cfs_period_ms"], "--backend-opt 'cfs_period_ms' is "
                                                             "not KEY=VALUE"),
                        (["--backend", "local", "--backend-opt", "period=20"],
                         "has no option 'period'")):
        r = runner.invoke(sinan_app, ["collect", "--app", "hotel-reservation", "--out", str(out),
                                      "--quiet", *argv])
        assert isinstance(r.exception, LeanstackError) and words in str(r.exception)
        assert "\n" not in str(r.exception) and not out.exists()
