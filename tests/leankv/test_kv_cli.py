import json

import pytest
from typer.testing import CliRunner

from leanstack.errors import LeanstackError
from leanstack.leankv.cli import build_config, kv_app

KEYS = {"compression", "ppl_fp16", "ppl", "ppl_increase_pct", "kl", "top1_agreement",
        "retrieval_acc_fp16", "retrieval_acc"}


def test_kv_eval_writes_all_metrics(tiny_model_dir, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(" ".join(["the grass is green and the sky is blue"] * 20))
    out = tmp_path / "res" / "eval.json"
    result = CliRunner().invoke(kv_app, [
        "eval", "--preset", "aggressive", "--out", str(out), "--model", str(tiny_model_dir),
        "--text", str(text), "--prefix", "40", "--decode", "24", "--passkey-trials", "1",
        "--passkey-length", "40", "--window", "4", "--hi-bits", "8,8"])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert set(data) >= KEYS
    assert data["config"]["hi_bits"] == [8, 8] and data["config"]["recent_window"] == 4
    assert data["ppl"] > 0 and 0 <= data["top1_agreement"] <= 1
    assert "| aggressive |" in result.output
    assert not [p for p in out.parent.iterdir() if p != out]  # no temp files left


def test_exact_preset_has_no_loss(tiny_model_dir, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(" ".join(["we go there and back again"] * 20))
    out = tmp_path / "exact.json"
    result = CliRunner().invoke(kv_app, [
        "eval", "--preset", "exact", "--out", str(out), "--model", str(tiny_model_dir),
        "--text", str(text), "--prefix", "20", "--decode", "20", "--passkey-trials", "0",
        "--significance", "sum", "--no-key-norm", "--full-bits", "32"])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert abs(data["ppl_increase_pct"]) < 1e-3 and data["top1_agreement"] == 1.0
    assert data["config"]["significance"] == "sum" and data["config"]["key_channel_norm"] is False


def test_new_settings_reach_the_config():
    cfg = build_config("balanced", full_bits=8, budget=12, significance="sum", key_norm=False)
    assert (cfg.full_bits, cfg.budget, cfg.significance, cfg.key_channel_norm) == \
        (8, 12, "sum", False)
    assert build_config("balanced").key_channel_norm is True
    window = build_config("balanced", score_decay=0.99, reprune=True, retier_every=4)
    assert (window.score_decay, window.reprune, window.retier_every) == (0.99, True, 4)
    assert build_config("aggressive", reprune=False).reprune is False
    with pytest.raises(LeanstackError, match="significance must be one of"):
        build_config("balanced", significance="max")
    with pytest.raises(LeanstackError, match="score_decay must be in"):
        build_config("balanced", score_decay=1.5)


def test_bad_cli_input_is_one_line_error(tmp_path):
    with pytest.raises(LeanstackError, match="KEY,VALUE"):
        build_config("balanced", hi_bits="8")
    result = CliRunner().invoke(kv_app, ["eval", "--preset", "nope", "--out", str(tmp_path / "x")])
    assert isinstance(result.exception, LeanstackError)
    assert "unknown preset" in str(result.exception)
    result = CliRunner().invoke(kv_app, ["eval", "--out", str(tmp_path / "x"), "--text",
                                         str(tmp_path / "missing.txt")])
    assert "not found" in str(result.exception)


def test_kv_chat_one_prompt(tiny_model_dir):
    result = CliRunner().invoke(kv_app, ["chat", "--model", str(tiny_model_dir), "--prompt",
                                         "the sky", "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.output
    assert "kv cache:" in result.output


def test_kv_chat_repl_reads_stdin_until_eof(tiny_model_dir):
    result = CliRunner().invoke(kv_app, ["chat", "--model", str(tiny_model_dir),
                                         "--max-new-tokens", "2"], input="the sky\n\nwe go\n")
    assert result.exit_code == 0, result.output
    assert result.output.count("kv cache:") == 2  # two questions, the blank line skipped
