"""The attention shape of a decoder config: layers, query heads, KV heads and head size.

The one place that derives ``head_dim`` (configs without the field use hidden size / heads), so
KV caches, byte counts and evaluations all agree on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from leanstack.errors import LeanstackError


@dataclass(frozen=True)
class AttentionShape:
    """How many layers and heads a decoder has, and the size of one head's vectors."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int

    def fp16_bytes_per_token(self) -> int:
        """Bytes one token's keys and values take in a dense fp16 cache (all layers)."""
        return self.num_layers * self.num_kv_heads * self.head_dim * 2 * 2


def text_config(model_config: Any) -> Any:
    """The decoder part of a (possibly multimodal) model config."""
    return model_config.get_text_config() if hasattr(model_config, "get_text_config") \
        else model_config


def attention_shape(model_config: Any) -> AttentionShape:
    """Read the attention shape from a transformers config (one-line error if it has none)."""
    text = text_config(model_config)
    try:
        heads = int(text.num_attention_heads)
        return AttentionShape(
            num_layers=int(text.num_hidden_layers),
            num_heads=heads,
            num_kv_heads=int(getattr(text, "num_key_value_heads", None) or heads),
            head_dim=int(getattr(text, "head_dim", None) or text.hidden_size // heads),
        )
    except (AttributeError, TypeError) as e:
        raise LeanstackError(
            f"not a decoder config with attention heads ({e}): pass model.config"
        ) from e
