import json

import pytest

import leanstack.llm
from leanstack.leankv.demo import KEY, run_demo


def test_demo_answers_with_both_caches_and_writes_details(tiny_model_dir, tmp_path, monkeypatch,
                                                          capsys):
    real = leanstack.llm.load_model
    monkeypatch.setattr(leanstack.llm, "load_model", lambda: real(str(tiny_model_dir)))
    run_demo(tmp_path / "out")
    data = json.loads((tmp_path / "out" / "leankv_demo.json").read_text())
    assert data["key"] == KEY and data["prompt_tokens"] > 100
    dense, lean = data["rows"]
    assert dense["cache"] == "fp16 dense" and dense["compression"] == pytest.approx(1.0)
    assert lean["cache"] == "LeanKV balanced" and lean["compression"] > 1.0
    printed = capsys.readouterr().out
    assert "LeanKV balanced" in printed and "leankv_demo.json" in printed


@pytest.mark.slow
def test_demo_on_smollm2_finds_the_key_with_both_caches(tmp_path):
    run_demo(tmp_path)
    rows = json.loads((tmp_path / "leankv_demo.json").read_text())["rows"]
    assert all(r["correct"] for r in rows)
    assert rows[1]["compression"] > 2.0
