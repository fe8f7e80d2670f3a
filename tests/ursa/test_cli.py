"""``leanstack ursa profile / plan`` and ``micro run --controller ursa``; bad input."""

from __future__ import annotations

import json

import pytest
from tests.microservices.helpers import run_cli

from .conftest import SHOP


@pytest.fixture()
def shop_file(tmp_path):
    path = tmp_path / "shop.toml"
    path.write_text(SHOP)
    return path


def test_profile_plan_run(monkeypatch, capsys, tmp_path, shop_file):
    prof, plan, res = tmp_path / "prof.json", tmp_path / "plan.json", tmp_path / "r.json"
    code, out, err = run_cli(monkeypatch, capsys, "ursa", "profile", "--app", str(shop_file),
                             "--rps", "150", "--out", str(prof))
    assert code == 0, err
    assert "collection took" in out and "catalog" in out and "bound" in out
    code, out, err = run_cli(monkeypatch, capsys, "ursa", "plan", "--app", str(shop_file),
                             "--profile", str(prof), "--out", str(plan))
    assert code == 0, err
    assert "cores per 100 req/s" in out and json.loads(plan.read_text())["app"] == "shop"
    code, out, err = run_cli(monkeypatch, capsys, "micro", "run", "--app", str(shop_file),
                             "--controller", "ursa", "--opt", f"plan={plan}", "--opt",
                             "headroom=0.3", "--rps", "150", "--duration", "30", "--quiet",
                             "--out", str(res))
    assert code == 0, err
    data = json.loads(res.read_text())
    assert data["settings"]["controller"]["headroom"] == 0.3
    assert data["summary"]["mean_cpu"] < 2.0  # static max is 3 cores


@pytest.mark.parametrize("args, message", [
    (("ursa", "plan", "--app", "social-network", "--profile", "nope.json", "--out", "p.json"),
     "no such Ursa profile"),
    (("ursa", "profile", "--app", "social-network", "--tiers", "nope", "--out", "p.json"),
     "unknown tier 'nope'"),
    (("ursa", "profile", "--app", "social-network", "--backend", "cloud", "--out", "p.json"),
     "unknown backend 'cloud'"),
    (("micro", "run", "--app", "social-network", "--controller", "ursa", "--out", "r.json"),
     "needs a plan"),
    (("ursa", "oracle", "--app", "social-network", "--rps", "100", "--target", "1.5"),
     "--target must be a violation rate in [0, 1)"),
    (("ursa", "oracle", "--app", "social-network", "--rps", "100", "--target", "-0.1"),
     "--target must be a violation rate in [0, 1)"),
    (("ursa", "oracle", "--app", "social-network", "--rps", "100", "--seed", "-1"),
     "--seed must be a whole number >= 0"),
    (("ursa", "profile", "--app", "social-network", "--rps", "inf", "--out", "p.json"),
     "above 0 req/s"),
])
def test_bad_input_is_one_line(monkeypatch, capsys, tmp_path, args, message):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code != 0 and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_plan_capacity_is_checked_in_one_line(monkeypatch, capsys, tmp_path, shop_file,
                                              shop_profile):
    prof = shop_profile.save(tmp_path / "prof.json")
    for capacity in ("0", "-2", "inf", "nan"):
        code, _, err = run_cli(monkeypatch, capsys, "ursa", "plan", "--app", str(shop_file),
                               "--profile", str(prof), "--out", str(tmp_path / "p.json"),
                               "--capacity", capacity, "--rps", "100")
        assert code == 2 and "--capacity must be a number above 0" in err, err
        assert err.count("\n") == 1 and not (tmp_path / "p.json").exists()


def test_fast_profile_and_composition_from_the_command_line(monkeypatch, capsys, tmp_path,
                                                            shop_file):
    prof, plan = tmp_path / "prof.json", tmp_path / "plan.json"
    code, out, err = run_cli(monkeypatch, capsys, "ursa", "profile", "--app", str(shop_file),
                             "--rps", "150", "--fast", "--out", str(prof))
    assert code == 0, err
    settings = json.loads(prof.read_text())["settings"]
    assert settings["parallel"] > 1 and settings["early_stop"]
    assert settings["start_utilization"] == 0.2 and not settings["shape"]
    code, out, err = run_cli(monkeypatch, capsys, "ursa", "profile", "--app", str(shop_file),
                             "--rps", "150", "--fast", "--shape", "--out", str(prof))
    assert code == 0, err
    assert json.loads(prof.read_text())["settings"]["shape"]  # on the simulator: its own shape
    code, out, err = run_cli(monkeypatch, capsys, "ursa", "plan", "--app", str(shop_file),
                             "--profile", str(prof), "--compose", "sum", "--out", str(plan))
    assert code == 0, err
    assert "predicted" in out and json.loads(plan.read_text())["composition"] == "sum"
    code, out, err = run_cli(monkeypatch, capsys, "ursa", "profile", "--app", str(shop_file),
                             "--backend-opt", "cfs_period_ms=20", "--out", str(prof))
    assert code != 0 and "backend 'sim' has no option 'cfs_period_ms'" in err
