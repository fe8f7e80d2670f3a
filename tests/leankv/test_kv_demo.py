import json

import pytest
import torch

import leanstack.leankv.evaluate
import leanstack.llm
from leanstack.leankv.demo import run_demo


def test_demo_answers_with_both_caches_and_writes_details(tiny_model_dir, tmp_path, monkeypatch,
                                                          capsys):
    real = leanstack.llm.load_model
    seen = []  # what each cache's generate() was really given

    def load(*args):
        loaded = real(str(tiny_model_dir))
        generate = loaded.model.generate

        def spy(**kwargs):
            seen.append((kwargs["input_ids"].clone(), type(kwargs["cache"]).__name__))
            return generate(**kwargs)

        loaded.model.generate = spy
        return loaded

    prompts = []
    make_prompt = leanstack.leankv.evaluate.passkey_prompt
    monkeypatch.setattr(leanstack.leankv.evaluate, "passkey_prompt",
                        lambda *a: prompts.append(make_prompt(*a)) or prompts[-1])
    monkeypatch.setattr(leanstack.llm, "load_model", load)
    run_demo(tmp_path / "out")
    data = json.loads((tmp_path / "out" / "leankv_demo.json").read_text())
    tok = real(str(tiny_model_dir)).tokenizer
    # both caches answered the same prompt, which hides the key near its middle
    assert [name for _, name in seen] == ["DynamicCache", "LeanKVCache"]
    assert torch.equal(seen[0][0], seen[1][0])
    [prompt] = prompts
    assert seen[0][0][0].tolist() == tok(prompt).input_ids
    assert data["prompt_tokens"] == seen[0][0].shape[1] > 100
    assert 0.3 < prompt.index(str(data["key"])) / len(prompt) < 0.7
    dense, lean = data["rows"]
    for row in data["rows"]:
        assert row["correct"] == (str(data["key"]) in row["answer"])
    assert dense["cache"] == "fp16 dense" and dense["compression"] == pytest.approx(1.0)
    assert lean["cache"] == "LeanKV balanced" and lean["compression"] > 1.0
    assert lean["bytes_held"] < dense["bytes_held"]
    printed = capsys.readouterr().out
    assert "LeanKV balanced" in printed and "leankv_demo.json" in printed


@pytest.mark.slow
def test_demo_on_smollm2_finds_the_key_with_both_caches(tmp_path):
    run_demo(tmp_path)
    rows = json.loads((tmp_path / "leankv_demo.json").read_text())["rows"]
    assert all(r["correct"] for r in rows)
    assert rows[1]["compression"] > 2.0
