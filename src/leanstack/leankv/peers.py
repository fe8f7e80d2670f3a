"""Caches LeanKV is compared with, each paired with how its bytes are measured.

A :class:`CacheSpec` builds a fresh transformers cache for a model config and says how many
bytes that cache holds, so every contender runs through the same decode-time harness
(:mod:`leanstack.leankv.evaluate`). Floats are counted at fp16 (two bytes), whatever dtype the
model computes in, so "compression" always compares with an fp16 cache of the same tokens.

- ``dense``: transformers' ``DynamicCache`` (every token at fp16).
- LeanKV configurations, including the peers that are policies of its store (uniform int8 =
  one K8V8 tier; H2O = heavy hitters by accumulated attention plus a recent window, fp16).
- ``kivi``: KIVI (keys quantized per channel in blocks of ``residual`` tokens, values per token,
  the latest tokens in an fp16 residual), simulated: the cache keeps de-quantized floats and
  counts the bytes the packed form would take.
- ``quanto``: transformers' ``QuantizedCache`` with the optimum-quanto backend; bytes are read
  from its quantized tensors and fp16 residual.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from leanstack.errors import LeanstackError
from leanstack.leankv.config import LeanKVConfig
from leanstack.leankv.quant import dequantize, quantize
from leanstack.llm.shapes import attention_shape

FP16 = 2  # bytes per float as counted


@dataclass(frozen=True)
class CacheSpec:
    """A named contender: ``make(model_config)`` builds a cache, ``bytes_held(cache)`` sizes it."""

    name: str
    family: str
    make: Callable[[Any], Cache]
    bytes_held: Callable[[Cache], int]
    settings: dict[str, Any]


def leankv_spec(name: str, config: LeanKVConfig, family: str = "leankv") -> CacheSpec:
    """A LeanKV configuration (or a peer expressed as a policy of the LeanKV store)."""
    from leanstack.leankv.cache import LeanKVCache

    return CacheSpec(name, family, lambda mc: LeanKVCache(mc, config),
                     lambda cache: cache.bytes_held(), config.to_dict())


def _dense_bytes(cache: Cache) -> int:
    return sum((layer.keys.numel() + layer.values.numel()) * FP16 for layer in cache.layers
               if layer.is_initialized)


def dense_spec() -> CacheSpec:
    """transformers' dense ``DynamicCache``, counted at fp16."""
    return CacheSpec("fp16 dense", "dense", lambda mc: DynamicCache(config=mc), _dense_bytes, {})


class KIVILayer(DynamicLayer):
    """One layer of a KIVI cache: quantized blocks plus an fp16 residual of recent tokens.

    Keys are quantized per channel over blocks of ``residual`` tokens, values per token in
    groups of ``group`` channels (both asymmetric, fp16 scale and minimum). A block is
    quantized once, when the residual holds ``residual`` tokens, and never again.
    """

    def __init__(self, bits: int, residual: int, group: int):
        super().__init__()
        self.bits, self.residual, self.group = bits, residual, group
        self.quantized_tokens = 0

    def _quantize_block(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        kt = k.transpose(-1, -2)  # [B, H, D, T]: groups run along the tokens of a channel
        kq = dequantize(quantize(kt, self.bits, self.residual), self.bits, self.residual)
        vq = dequantize(quantize(v, self.bits, self.group), self.bits, self.group)
        return kq.transpose(-1, -2).to(k.dtype), vq.to(v.dtype)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new tokens; quantize whole blocks that leave the residual."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        keys = torch.cat([self.keys, key_states], -2)
        values = torch.cat([self.values, value_states], -2)
        stored = self.quantized_tokens
        ready = (keys.shape[-2] - stored) // self.residual * self.residual
        if ready:
            kq, vq = self._quantize_block(keys[..., stored:stored + ready, :],
                                          values[..., stored:stored + ready, :])
            keys = torch.cat([keys[..., :stored, :], kq, keys[..., stored + ready:, :]], -2)
            values = torch.cat([values[..., :stored, :], vq, values[..., stored + ready:, :]], -2)
            self.quantized_tokens += ready
        self.keys, self.values = keys, values
        return keys, values

    def packed_bytes(self) -> int:
        """Bytes of the packed blocks (data, per-channel key and per-token value scales and
        minimums) plus the fp16 residual."""
        if not self.is_initialized:
            return 0
        b_size, heads, length, dim = self.keys.shape
        vectors = b_size * heads
        q = self.quantized_tokens
        data = 2 * q * dim * self.bits // 8
        key_meta = (q // self.residual) * dim * 2 * FP16
        value_meta = q * (dim // self.group) * 2 * FP16
        residual = 2 * (length - q) * dim * FP16
        return vectors * (data + key_meta + value_meta + residual)


class KIVICache(Cache):
    """KIVI-style quantized cache (simulated; see :class:`KIVILayer`)."""

    def __init__(self, model_config: Any, bits: int, residual: int = 32, group: int = 64):
        shape = attention_shape(model_config)
        head_dim = shape.head_dim
        if bits not in (2, 4, 8) or head_dim % group:
            raise LeanstackError(f"KIVI needs bits in 2/4/8 and a group dividing {head_dim}, "
                                 f"got {bits} bits, group {group}")
        super().__init__(layers=[KIVILayer(bits, residual, group)
                                 for _ in range(shape.num_layers)])

    def bytes_held(self) -> int:
        return sum(layer.packed_bytes() for layer in self.layers)


def kivi_spec(bits: int, residual: int = 32, group: int = 64) -> CacheSpec:
    """KIVI-style K``bits``V``bits`` with an fp16 residual of up to ``residual`` tokens."""
    return CacheSpec(f"KIVI {bits}-bit (residual {residual})", "kivi",
                     lambda mc: KIVICache(mc, bits, residual, group),
                     lambda cache: cache.bytes_held(),
                     {"bits": bits, "residual": residual, "group": group})


def _tensor_bytes(t: Any) -> int:
    """Bytes of a plain or quanto tensor, floats counted at fp16."""
    if t is None or not isinstance(t, torch.Tensor):
        return 0
    if hasattr(t, "__tensor_flatten__") and type(t) is not torch.Tensor:
        names, _ = t.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(t, n)) for n in names)
    if t.is_floating_point():
        return t.numel() * FP16
    return t.numel() * t.element_size()


def _quanto_bytes(cache: Cache) -> int:
    return sum(_tensor_bytes(layer._quantized_keys) + _tensor_bytes(layer._quantized_values)
               + _tensor_bytes(layer.keys) + _tensor_bytes(layer.values)
               for layer in cache.layers if layer.is_initialized)


def quanto_spec(bits: int, residual: int = 128, group: int = 64) -> CacheSpec:
    """transformers ``QuantizedCache`` with the optimum-quanto backend (default axes)."""
    from transformers.cache_utils import QuantizedCache

    def make(mc: Any) -> Cache:
        return QuantizedCache("quanto", mc, nbits=bits, q_group_size=group,
                              residual_length=residual)

    return CacheSpec(f"QuantizedCache quanto {bits}-bit (residual {residual})", "quanto", make,
                     _quanto_bytes, {"bits": bits, "residual": residual, "group": group})


def h2o_config(budget: int, retier_every: int = 4) -> LeanKVConfig:
    """H2O as a LeanKV store policy: ``budget`` tokens per head, half heavy hitters by
    accumulated attention, half the most recent, all at fp16; evicts every ``retier_every``
    tokens (new tokens wait in the fp16 tier until then, and are counted)."""
    return LeanKVConfig(full_bits=16, hi_bits=(16, 16), lo_bits=(16, 16),
                        significance="sum", budget=budget // 2, sink_tokens=0,
                        recent_window=budget - budget // 2, retier_every=retier_every,
                        key_channel_norm=False)


def uniform_config(key_bits: int, value_bits: int, **overrides: Any) -> LeanKVConfig:
    """Every token at K``key_bits``V``value_bits`` in the LeanKV store, nothing pruned."""
    settings = dict(hi_bits=(key_bits, value_bits), lo_bits=(key_bits, value_bits),
                    hi_mass=1.0, keep_mass=1.0, sink_tokens=0, recent_window=0)
    return LeanKVConfig(**{**settings, **overrides})


KVPRESS_PRESSES = ("SnapKVPress", "ExpectedAttentionPress", "KnormPress")


class PressedCache(DynamicCache):
    """A dense fp16 cache whose prompt a kvpress press shortens once, right after prefill.

    Pruned tokens are really removed, so later tokens keep their true positions: the sequence
    length the model sees counts them, the mask and query offset use what is held."""

    def __init__(self, model_config: Any, press: Any):
        super().__init__(config=model_config)
        self.press = press
        self.dropped = [0] * len(self.layers)
        self.pressed = [False] * len(self.layers)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return super().get_seq_length(layer_idx) + self.dropped[layer_idx]

    def get_query_offset(self, layer_idx: int = 0) -> int:
        return super().get_seq_length(layer_idx)


def _press_hook(module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> Any:
    """After a layer's attention: let a :class:`PressedCache`'s press compress the prefill
    (kvpress 0.5 reads the cache as ``past_key_values`` and the prefill from
    ``cache_position``, which this transformers version no longer passes)."""
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    idx = module.layer_idx
    if not isinstance(cache, PressedCache) or cache.pressed[idx]:
        return output
    cache.pressed[idx] = True
    held = cache.layers[idx].keys.shape[-2]
    q_len = kwargs["hidden_states"].shape[1]
    legacy = {**kwargs, "past_key_values": cache,
              "cache_position": torch.arange(q_len, device=kwargs["hidden_states"].device)}
    output = cache.press.forward_hook(module, args, legacy, output)
    cache.dropped[idx] += held - cache.layers[idx].keys.shape[-2]
    return output


def kvpress_spec(model: Any, press_name: str, ratio: float) -> CacheSpec:
    """A kvpress press (``press_name`` from :data:`KVPRESS_PRESSES`) removing ``ratio`` of the
    prompt after prefill; needs the optional ``kvpress`` package importable."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    try:
        import kvpress
    except ImportError as e:
        raise LeanstackError(f"kvpress is not importable ({e}): see docs/leankv.md for how to "
                             "install it beside the pinned transformers") from None
    if press_name not in KVPRESS_PRESSES:
        raise LeanstackError(f"unknown press {press_name!r}: choose one of {KVPRESS_PRESSES}")
    # importing kvpress overrides every attention function with a wrapper for its head-wise
    # presses (unused here) that breaks other functions' signatures (LeanKV's): drop the
    # overrides, which leaves the registered functions
    for name in list(ALL_ATTENTION_FUNCTIONS):
        with contextlib.suppress(KeyError):  # KeyError: registered, not overridden
            del ALL_ATTENTION_FUNCTIONS[name]
    press = getattr(kvpress, press_name)(compression_ratio=ratio)
    press.post_init_from_model(model)
    if not getattr(model, "_leankv_press_hooks", False):
        for layer in model.model.layers:
            layer.self_attn.rotary_emb = model.model.rotary_emb  # as kvpress's own hooks do
            layer.self_attn.register_forward_hook(_press_hook, with_kwargs=True)
        model._leankv_press_hooks = True
    return CacheSpec(f"kvpress {press_name.removesuffix('Press')} {ratio:.0%}", "kvpress",
                     lambda mc: PressedCache(mc, press), _dense_bytes,
                     {"press": press_name, "compression_ratio": ratio,
                      "kvpress": importlib.metadata.version("kvpress")})
