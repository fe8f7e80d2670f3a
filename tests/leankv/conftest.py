import pytest
import torch


@pytest.fixture(scope="module")
def tiny_llama():
    """A randomly initialised 2-layer Llama with GQA (4 query heads, 2 KV heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                      max_position_embeddings=512)
    return LlamaForCausalLM(cfg).eval()
