"""LeanKVCache: a transformers cache whose tokens live in the paged, tiered LeanKV store.

Usage: ``model.generate(..., past_key_values=LeanKVCache(model.config, LeanKVConfig.preset(
"balanced")))``. Creating the cache switches the model config's attention implementation to
``leankv`` (which falls back to SDPA for any other cache).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from leanstack.errors import LeanstackError
from leanstack.leankv.attention import (
    ACTIVE_CACHE,
    ATTENTION_NAME,
    register_attention,
    sparse_attention,
)
from leanstack.leankv.config import LeanKVConfig
from leanstack.leankv.significance import assign_tiers, decision_significance
from leanstack.leankv.store import NUM_TIERS, PRUNED, TIER_FULL, KVStore


class LeanKVLayer(CacheLayerMixin):
    """One decoder layer's view of the shared store."""

    is_sliding = False

    def __init__(self, cache: LeanKVCache, layer_idx: int):
        super().__init__()
        self.cache = cache
        self.layer_idx = layer_idx
        self.committed = 0  # tokens already written to the store (including pruned ones)
        self.since_retier = 0
        self.pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Hold the new tokens until the attention call stores them; return them unchanged."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        earlier = self.cache.layers[self.layer_idx - 1] if self.layer_idx else self
        if self.pending is not None or earlier.pending is not None:
            raise LeanstackError(
                "LeanKVCache was updated twice without attention in between: the model does not "
                f"use the {ATTENTION_NAME!r} attention implementation; build the cache with "
                "LeanKVCache(model.config, ...) before generating"
            )
        self.cache.ensure_store(key_states)
        self.pending = (key_states, value_states)
        return key_states, value_states

    def owns(self, key: torch.Tensor) -> bool:
        return self.pending is not None and self.pending[0] is key

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.committed + query_length, 0

    def get_seq_length(self) -> int:
        return self.committed + (self.pending[0].shape[-2] if self.pending is not None else 0)

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        raise LeanstackError("LeanKVCache cannot be reset: create a new cache per generation")

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise LeanstackError("LeanKVCache does not support beam search: use num_beams=1")

    def _stored_tokens(self) -> dict[str, torch.Tensor]:
        store = self.cache.store
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in
                                                ("k", "v", "pos", "score", "batch", "head",
                                                 "tier", "base", "raw")}
        for tier in range(NUM_TIERS):
            got = store.read(self.layer_idx, tier)
            k, v, pos, score = store.layouts[tier].decode(got.records)
            if store.quantizes_keys(tier):
                k = store.normalize_keys(self.layer_idx, got.batch, got.head, k, inverse=True)
            for name, val in (("k", k), ("v", v), ("pos", pos), ("score", score),
                              ("batch", got.batch), ("head", got.head),
                              ("tier", torch.full_like(pos, tier)), ("base", got.byte_base)):
                parts[name].append(val)
            parts["raw"].append(got.records)
        out = {k: torch.cat(v) for k, v in parts.items() if k != "raw"}
        out["raw_by_tier"] = parts["raw"]  # type: ignore[assignment]
        return out

    def attend(self, query: torch.Tensor, mask: torch.Tensor | None,
               scaling: float) -> torch.Tensor:
        """Attention of ``query`` over stored + pending tokens; then store the pending tokens,
        add this step's attention mass to every token's score and re-tier when due."""
        assert self.pending is not None
        key, value = self.pending
        self.pending = None
        store, heads = self.cache.store, self.cache.num_kv_heads
        b_size, _, q_len, dim = key.shape
        old = self._stored_tokens()
        dev = key.device
        nb = torch.arange(b_size, device=dev).repeat_interleave(heads * q_len)
        nh = torch.arange(heads, device=dev).repeat_interleave(q_len).repeat(b_size)
        q_pos = self.committed + torch.arange(q_len, device=dev)
        npos = q_pos.repeat(b_size * heads)
        n_old = old["pos"].numel()
        decay = self.cache.config.score_decay
        weight = decay ** torch.arange(q_len - 1, -1, -1, device=dev, dtype=torch.float32)
        out, mass = sparse_attention(
            query,
            torch.cat([old["k"], key.reshape(-1, dim).float()]),
            torch.cat([old["v"], value.reshape(-1, dim).float()]),
            torch.cat([old["batch"], nb]) * heads + torch.cat([old["head"], nh]),
            torch.cat([old["pos"], npos]), heads, q_pos, mask, scaling,
            weight if decay < 1.0 else None)
        if self.committed == 0:
            self.cache.note_first_valid(mask, q_len)
        new_score = old["score"] * decay ** q_len + mass[:n_old]
        for tier in range(NUM_TIERS):
            sel = old["tier"] == tier
            if bool(sel.any()):
                store.write_scores(tier, old["base"][sel], new_score[sel])
        layout = store.layouts[TIER_FULL]
        store.append(self.layer_idx, TIER_FULL, nb, nh,
                     layout.encode(key.reshape(-1, dim), value.reshape(-1, dim), npos,
                                   mass[n_old:]))
        self.committed += q_len
        self.since_retier += q_len
        if self.since_retier >= self.cache.config.retier_every or q_len > 1:
            self.retier()
        return out

    def retier(self) -> None:
        """Move tokens down the tiers (or prune them) by their current significance."""
        self.since_retier = 0
        store, cfg = self.cache.store, self.cache.config
        tok = self._stored_tokens()
        if tok["pos"].numel() == 0:
            return
        heads = self.cache.num_kv_heads
        group = tok["batch"] * heads + tok["head"]
        pruned_mass = store.pruned_mass[self.layer_idx]
        new = assign_tiers(cfg, group, tok["pos"], tok["score"], tok["tier"], self.committed,
                           self.cache.first_valid, tok["batch"],
                           None if cfg.reprune else pruned_mass)
        gone = new == PRUNED
        sig = decision_significance(cfg, tok["pos"][gone], tok["score"][gone], self.committed,
                                    self.cache.first_valid, tok["batch"][gone])
        pruned_mass.index_add_(0, group[gone], sig)
        counts = [int((tok["tier"] == t).sum()) for t in range(NUM_TIERS)]
        raw_offsets = torch.tensor([0, *counts]).cumsum(0)
        for tier in range(NUM_TIERS):
            stay = (tok["tier"] == tier) & (new == tier)
            enter = (tok["tier"] != tier) & (new == tier)
            if bool(stay.sum() == (tok["tier"] == tier).sum()) and not bool(enter.any()):
                continue  # tier unchanged
            lo = int(raw_offsets[tier])
            raw = tok["raw_by_tier"][tier][stay[lo:lo + counts[tier]]]
            layout = store.layouts[tier]
            k_in = tok["k"][enter]
            if store.quantizes_keys(tier):
                valid = (new < PRUNED) & (tok["pos"] >= self.cache.first_valid[tok["batch"]])
                store.set_key_norm(self.layer_idx, tok["batch"][valid], tok["head"][valid],
                                   tok["k"][valid])
                k_in = store.normalize_keys(self.layer_idx, tok["batch"][enter],
                                            tok["head"][enter], k_in)
            moved = layout.encode(k_in, tok["v"][enter], tok["pos"][enter], tok["score"][enter])
            store.clear(self.layer_idx, tier)
            store.append(self.layer_idx, tier, torch.cat([tok["batch"][stay], tok["batch"][enter]]),
                         torch.cat([tok["head"][stay], tok["head"][enter]]),
                         torch.cat([raw, moved]))


class LeanKVCache(Cache):
    """A transformers cache backed by LeanKV's paged, tiered, per-head store."""

    def __init__(self, model_config: Any, config: LeanKVConfig | str | None = None):
        if isinstance(config, str):
            config = LeanKVConfig.preset(config)
        self.config = config or LeanKVConfig.preset("balanced")
        text = model_config.get_text_config() if hasattr(model_config, "get_text_config") \
            else model_config
        try:
            self.num_layers = int(text.num_hidden_layers)
            self.num_heads = int(text.num_attention_heads)
            self.num_kv_heads = int(getattr(text, "num_key_value_heads", None) or self.num_heads)
            self.head_dim = int(getattr(text, "head_dim", None)
                                or text.hidden_size // text.num_attention_heads)
        except AttributeError as e:
            raise LeanstackError(
                "LeanKVCache needs a decoder config with attention heads "
                f"({e}): pass model.config"
            ) from e
        if getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True):
            raise LeanstackError(
                f"{text.model_type} uses sliding-window attention, which LeanKVCache does not "
                "support yet: use a full-attention (Llama-family) model"
            )
        register_attention()
        text._attn_implementation = ATTENTION_NAME
        if text is not model_config:
            model_config._attn_implementation = ATTENTION_NAME
        self.store: KVStore | None = None
        self.first_valid: torch.Tensor | None = None
        super().__init__(layers=[LeanKVLayer(self, i) for i in range(self.num_layers)])

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        ACTIVE_CACHE.set(self)
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    def ensure_store(self, key_states: torch.Tensor) -> None:
        """Create the store on first use, sized for this batch."""
        if self.store is None:
            b_size, heads, _, dim = key_states.shape
            if heads != self.num_kv_heads or dim != self.head_dim:
                raise LeanstackError(
                    f"cache built for {self.num_kv_heads} KV heads x {dim} but the model produced "
                    f"{heads} x {dim}: build LeanKVCache from this model's config"
                )
            self.store = KVStore(self.config, self.num_layers, heads, dim, b_size,
                                 device=key_states.device)
            self.first_valid = torch.zeros(b_size, dtype=torch.int64, device=key_states.device)

    def note_first_valid(self, mask: torch.Tensor | None, q_len: int) -> None:
        """Remember each request's first non-padding position (sinks count from it)."""
        if mask is None or self.first_valid is None:
            return
        m = mask[:, 0, q_len - 1]
        m = m if m.dtype == torch.bool else m == 0
        self.first_valid = torch.argmax(m.to(torch.int8), dim=-1)

    @property
    def is_compileable(self) -> bool:
        return False

    def tokens_seen(self) -> int:
        return self.layers[0].get_seq_length()

    def bytes_held(self) -> int:
        """Bytes the store holds (pages with slack, page tables, counters)."""
        return self.store.bytes_held() if self.store is not None else 0

    def fp16_bytes(self) -> int:
        """What a dense fp16 cache would hold for the same tokens."""
        batch = self.store.batch_size if self.store is not None else 0
        return batch * self.tokens_seen() * self.num_layers * self.num_kv_heads * self.head_dim * 4

    def compression(self) -> float:
        """fp16 bytes over bytes held (higher is better)."""
        held = self.bytes_held()
        return self.fp16_bytes() / held if held else float("nan")

    def tier_counts(self) -> dict[str, int]:
        """Stored tokens per tier and how many (layer, head, token) entries were pruned."""
        if self.store is None:
            return {"full": 0, "high": 0, "low": 0, "pruned": 0}
        length = self.store.length.view(-1, NUM_TIERS).sum(0).tolist()
        total = self.store.batch_size * self.tokens_seen() * self.num_layers * self.num_kv_heads
        return {"full": length[0], "high": length[1], "low": length[2],
                "pruned": total - sum(length)}
