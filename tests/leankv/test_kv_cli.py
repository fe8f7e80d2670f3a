import json
import os
import re

import pytest
from typer.testing import CliRunner

from leanstack.errors import LeanstackError
from leanstack.leankv.cli import build_config, kv_app

KEYS = {"compression", "ppl_increase_pct", "kl", "top1_agreement", "retrieval_acc_fp16",
        "retrieval_acc", "mean", "worst", "documents", "split"}


def test_kv_eval_writes_all_metrics(tiny_model_dir, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(" ".join(["the grass is green and the sky is blue"] * 20))
    out = tmp_path / "res" / "eval.json"
    result = CliRunner().invoke(kv_app, [
        "eval", "--preset", "aggressive", "--out", str(out), "--model", str(tiny_model_dir),
        "--text", str(text), "--prefix", "40", "--decode", "24", "--passkey-trials", "1",
        "--lengths", "40", "--window", "4", "--hi-bits", "8,8"])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert set(data) >= KEYS
    assert data["config"]["hi_bits"] == [8, 8] and data["config"]["recent_window"] == 4
    [doc] = data["documents"]
    assert doc["name"] == "t.txt" and data["split"] == "custom"
    assert doc["ppl"] > 0 and 0 <= doc["top1_agreement"] <= 1
    # compression by pages in use and by what the pool really holds agree for one request
    assert doc["compression"] >= doc["compression_reserved"] > 0.85 * doc["compression"]
    # one passkey item and one 3-key item, each answered by both caches
    assert [(i["kind"], len(i["ours"]), len(i["dense"])) for i in doc["items"]] == \
        [("passkey", 1, 1), ("multikey", 3, 3)]
    assert data["worst"]["kl"] == {"value": doc["kl"], "document": "t.txt"}
    assert "| aggressive | custom | mean |" in result.output
    assert not [p for p in out.parent.iterdir() if p != out]  # no temp files left


def test_kv_eval_defaults_to_the_test_half_of_the_corpus(tiny_model_dir, tmp_path):
    from leanstack.leankv.corpus import documents

    out = tmp_path / "eval.json"
    result = CliRunner().invoke(kv_app, [
        "eval", "--preset", "balanced", "--out", str(out), "--model", str(tiny_model_dir),
        "--prefix", "16", "--decode", "4", "--passkey-trials", "0"])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    test_names = [d.name for d in documents("test")]
    assert data["split"] == "test" and [d["name"] for d in data["documents"]] == test_names
    assert not set(test_names) & {d.name for d in documents("calibration")}
    assert "test half of the corpus" in result.output
    worst = data["worst"]["ppl_increase_pct"]
    assert worst["value"] == max(d["ppl_increase_pct"] for d in data["documents"])
    assert worst["document"] in test_names


def test_exact_preset_has_no_loss(tiny_model_dir, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(" ".join(["we go there and back again"] * 20))
    out = tmp_path / "exact.json"
    result = CliRunner().invoke(kv_app, [
        "eval", "--preset", "exact", "--out", str(out), "--model", str(tiny_model_dir),
        "--text", str(text), "--prefix", "20", "--decode", "20", "--lengths", "30",
        "--significance", "sum", "--no-key-norm", "--full-bits", "32"])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert abs(data["ppl_increase_pct"]) < 1e-3 and data["top1_agreement"] == 1.0
    # question fed after the context: the exact cache answers exactly as the dense one
    assert [i["ours"] for i in data["documents"][0]["items"]] == \
        [i["dense"] for i in data["documents"][0]["items"]]
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


def _eval_error(args):
    """Run ``kv eval`` with a model that must never load; return the one-line error."""
    result = CliRunner().invoke(kv_app, ["eval", "--model", "/nonexistent-model", *args])
    assert isinstance(result.exception, LeanstackError), result.output
    message = str(result.exception)
    assert "\n" not in message and "nonexistent-model" not in message
    return message


def test_unusable_text_out_and_trials_fail_before_any_work(tmp_path):
    out = str(tmp_path / "r.json")
    assert "is a directory" in _eval_error(["--out", out, "--text", str(tmp_path)])
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    assert "not UTF-8" in _eval_error(["--out", out, "--text", str(latin)])
    assert "is a directory" in _eval_error(["--out", str(tmp_path)])
    assert "--passkey-trials must be >= 0" in _eval_error(["--out", out, "--passkey-trials", "-1"])
    assert "--lengths" in _eval_error(["--out", out, "--lengths", "1k"])
    blocked = tmp_path / "ro"
    blocked.mkdir()
    blocked.chmod(0o500)
    try:
        if not os.access(blocked, os.W_OK):  # root may write anywhere
            assert "not a writable directory" in _eval_error(["--out", str(blocked / "r.json")])
    finally:
        blocked.chmod(0o700)
    assert not (tmp_path / "r.json").exists()


def test_kv_chat_one_prompt(tiny_model_dir):
    import re

    from leanstack.leankv import LeanKVCache, LeanKVConfig
    from leanstack.llm import generate_text, load_model

    result = CliRunner().invoke(kv_app, ["chat", "--model", str(tiny_model_dir), "--prompt",
                                         "the sky", "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.output
    # the printed answer is the greedy answer through a `balanced` LeanKV cache
    loaded = load_model(str(tiny_model_dir))
    cache = LeanKVCache(loaded.model.config, LeanKVConfig.preset("balanced"))
    expected = generate_text(loaded, ["the sky"], max_new_tokens=4, cache=cache)[0]
    assert expected and f"{expected}\n" in result.output
    held, ratio = re.search(r"kv cache: (\d+) B held, ([\d.]+)x vs fp16", result.output).groups()
    assert int(held) == cache.bytes_held() > 0 and float(ratio) == round(cache.compression(), 2)


def test_kv_chat_repl_reads_stdin_until_eof(tiny_model_dir):
    result = CliRunner().invoke(kv_app, ["chat", "--model", str(tiny_model_dir),
                                         "--max-new-tokens", "2"], input="the sky\n\nwe go\n")
    assert result.exit_code == 0, result.output
    assert result.output.count("kv cache:") == 2  # two questions, the blank line skipped


def test_calibrate_writes_a_preset_that_eval_loads(tiny_model_dir, tmp_path):
    from leanstack.leankv.calibrate import LADDER, rung_config
    from leanstack.leankv.config import LeanKVConfig

    common = ["--model", str(tiny_model_dir), "--prefix", "16", "--decode", "4",
              "--passkey-trials", "0"]
    easy = tmp_path / "easy.toml"
    result = CliRunner().invoke(kv_app, ["calibrate", "--out", str(easy), "--target-ppl", "1e9",
                                         "--target-kl", "1e9", *common])
    assert result.exit_code == 0, result.output
    assert "calibration half" in result.output and "meets the targets" in result.output
    # the bar completes though the later rungs are never run
    assert re.search(r"^calibrate\b.* 100% ", result.output, re.MULTILINE)
    # loose targets: the first, most compressed rung is taken
    assert LeanKVConfig.load(str(easy)) == rung_config(LADDER[0][1])
    assert "met_targets = true" in easy.read_text()
    assert 'split = "calibration"' in easy.read_text()
    impossible = tmp_path / "none.toml"
    result = CliRunner().invoke(kv_app, ["calibrate", "--out", str(impossible), "--target-ppl",
                                         "-100", *common])
    assert result.exit_code == 0, result.output
    assert result.output.count("misses") == len(LADDER)
    assert "met_targets = false" in impossible.read_text()
    assert LeanKVConfig.load(str(impossible)) == rung_config(LADDER[-1][1])
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(kv_app, ["eval", "--preset", str(easy), "--out", str(out),
                                         "--split", "calibration", *common])
    assert result.exit_code == 0, result.output
    assert LeanKVConfig.from_dict({k: tuple(v) if isinstance(v, list) else v for k, v in
                                   json.loads(out.read_text())["config"].items()}) == \
        LeanKVConfig.load(str(easy))


def test_preset_files_fail_in_one_line(tmp_path):
    from leanstack.leankv.config import LeanKVConfig

    with pytest.raises(LeanstackError, match="not found"):
        LeanKVConfig.load(str(tmp_path / "missing.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("hi_bits = [8, 4\n")
    with pytest.raises(LeanstackError, match="not valid UTF-8 TOML"):
        LeanKVConfig.load(str(bad))
    bad.write_text('preset = "lossless"\nwindow = 3\n')
    with pytest.raises(LeanstackError, match="unknown LeanKV setting 'window'"):
        LeanKVConfig.load(str(bad))
    bad.write_text('preset = "lossless"\nkeep_mass = 0.1\n')
    with pytest.raises(LeanstackError, match="hi_mass <= keep_mass"):
        LeanKVConfig.load(str(bad))
    result = CliRunner().invoke(kv_app, ["calibrate", "--out", str(tmp_path / "p.json")])
    assert "must end in .toml" in str(result.exception)
