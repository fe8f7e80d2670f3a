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
    fused_attention,
    padded_attention,
    register_attention,
)
from leanstack.leankv.config import LeanKVConfig
from leanstack.leankv.significance import assign_tiers, decision_significance
from leanstack.leankv.store import NUM_TIERS, PRUNED, TIER_FULL, KVStore
from leanstack.leankv.working_set import WorkingSet
from leanstack.llm.shapes import attention_shape, text_config

PIN_SPAN = 1 << 40  # positions stay below this; codes pinned tokens as group * PIN_SPAN + pos


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
        self.working: WorkingSet | None = None  # this layer's kept tokens, de-quantized
        # tokens pinned by the observation window, as group * PIN_SPAN + position (sorted)
        self.pinned: torch.Tensor | None = None

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

    def _working_set(self, b_size: int, dim: int, device: torch.device) -> WorkingSet:
        if self.working is None:
            self.working = WorkingSet(b_size * self.cache.num_kv_heads, dim, device)
        return self.working

    def attend(self, query: torch.Tensor, mask: torch.Tensor | None,
               scaling: float) -> torch.Tensor:
        """Store the pending tokens, then attention of ``query`` over every kept token of the
        layer; add this step's attention mass to every token's score and re-tier when due."""
        assert self.pending is not None
        key, value = self.pending
        self.pending = None
        store, heads = self.cache.store, self.cache.num_kv_heads
        b_size, _, q_len, dim = key.shape
        dev = key.device
        working = self._working_set(b_size, dim, dev)
        q_pos = self.committed + torch.arange(q_len, device=dev)
        n_new = b_size * heads * q_len
        layout = store.layouts[TIER_FULL]
        records = layout.encode(key.reshape(-1, dim), value.reshape(-1, dim),
                                q_pos.repeat(b_size * heads), torch.zeros(n_new, device=dev))
        if q_len == 1:
            store.append_one_each(self.layer_idx, TIER_FULL, records)
        else:
            nb = torch.arange(b_size, device=dev).repeat_interleave(heads * q_len)
            nh = torch.arange(heads, device=dev).repeat_interleave(q_len).repeat(b_size)
            store.append(self.layer_idx, TIER_FULL, nb, nh, records)
        shape = (b_size * heads, q_len, dim)
        # this step attends to its own tokens at full precision; later steps read them decoded
        working.append(key.reshape(shape), value.reshape(shape), q_pos,
                       torch.zeros(shape[:2], device=dev), TIER_FULL)
        cfg = self.cache.config
        if cfg.ranks_tokens:
            out = self._attend_ranking(query, mask, scaling, q_pos, heads)
        else:  # significance cannot change what is stored: no mass to keep
            out = fused_attention(query, working.keys, working.values, working.pos, heads,
                                  q_pos, mask, scaling)
        k_new, v_new, _, _ = layout.decode(records)  # decoded once, when stored
        working.overwrite_newest(k_new.view(shape), v_new.view(shape))
        if self.committed == 0:
            self.cache.note_first_valid(mask, q_len)
        self.committed += q_len
        self.since_retier += q_len
        if self.since_retier >= self.cache.config.retier_every or q_len > 1:
            self.retier()
        return out

    def _attend_ranking(self, query: torch.Tensor, mask: torch.Tensor | None, scaling: float,
                        q_pos: torch.Tensor, heads: int) -> torch.Tensor:
        """Attention that adds each token's (decayed) attention mass to its score, and pins
        observed prompt tokens after a chunk when the policy asks for it."""
        working, cfg = self.working, self.cache.config
        q_len = q_pos.numel()
        weight = None
        if cfg.score_decay < 1.0 and q_len > 1:  # older queries of this chunk count less
            weight = cfg.score_decay ** torch.arange(q_len - 1, -1, -1, device=q_pos.device,
                                                     dtype=torch.float32)
        out, mass = padded_attention(query, working.keys, working.values, working.pos, heads,
                                     q_pos, mask, scaling, weight)
        if q_len > 1 and cfg.snap_window > 0:
            self._pin_observed(query, mask, scaling, q_pos, heads)
        if cfg.score_decay < 1.0:
            working.score.mul_(cfg.score_decay ** q_len)
        working.score.add_(mass)
        return out

    def _pin_observed(self, query: torch.Tensor, mask: torch.Tensor | None, scaling: float,
                      q_pos: torch.Tensor, heads: int) -> None:
        """Pin, per head, the ``snap_keep`` share of its tokens that the chunk's last
        ``snap_window`` queries attend to most (SnapKV's observation window)."""
        cfg, working = self.cache.config, self.working
        w = min(cfg.snap_window, query.shape[2])
        obs_mask = mask[:, :, -w:] if mask is not None else None
        _, mass = padded_attention(query[:, :, -w:], working.keys, working.values, working.pos,
                                   heads, q_pos[-w:], obs_mask, scaling)
        valid = working.pos >= 0
        ranked = torch.argsort(mass.masked_fill(~valid, -1.0), dim=1, descending=True)
        rank = torch.empty_like(ranked)
        rank.scatter_(1, ranked, torch.arange(ranked.shape[1], device=ranked.device)
                      .expand_as(ranked).contiguous())
        keep = torch.ceil(cfg.snap_keep * valid.sum(1, keepdim=True)).long()
        chosen = valid & (rank < keep)
        rows = torch.arange(working.pos.shape[0], device=ranked.device).unsqueeze(1)
        codes = (rows * PIN_SPAN + working.pos)[chosen]
        self.pinned = torch.unique(codes if self.pinned is None else
                                   torch.cat([self.pinned, codes]))

    def _stored_records(self, tier: int, group: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """The stored records of ``tier`` of the tokens (group[i], pos[i]), in that order."""
        store, heads = self.cache.store, self.cache.num_kv_heads
        got = store.read(self.layer_idx, tier)
        span = self.committed + 1
        have = (got.batch * heads + got.head) * span + store.layouts[tier].positions(got.records)
        ordered, order = torch.sort(have)
        return got.records[order[torch.searchsorted(ordered, group * span + pos)]]

    def retier(self) -> None:
        """Move tokens down the tiers (or prune them) by their current significance; only the
        tokens that change tier are re-encoded and re-decoded."""
        self.since_retier = 0
        store, cfg, working = self.cache.store, self.cache.config, self.working
        tok = working.flat()
        if tok["pos"].numel() == 0:
            return
        heads = self.cache.num_kv_heads
        group, pos, score, tier = tok["group"], tok["pos"], tok["score"], tok["tier"]
        batch, head = group // heads, group % heads
        pruned_mass = store.pruned_mass[self.layer_idx]
        pinned = None if self.pinned is None else torch.isin(group * PIN_SPAN + pos,
                                                              self.pinned)
        new = assign_tiers(cfg, group, pos, score, tier, self.committed,
                           self.cache.first_valid, batch, None if cfg.reprune else pruned_mass,
                           pinned)
        gone = new == PRUNED
        sig = decision_significance(cfg, pos[gone], score[gone], self.committed,
                                    self.cache.first_valid, batch[gone])
        pruned_mass.index_add_(0, group[gone], sig)
        k, v = tok["k"], tok["v"]
        for t in range(NUM_TIERS):
            was, now = tier == t, new == t
            stay, enter = was & now, ~was & now
            if bool(stay.sum() == was.sum()) and not bool(enter.any()):
                continue  # tier unchanged
            layout = store.layouts[t]
            leaves = not bool(stay.sum() == was.sum())
            k_in = k[enter]
            if store.quantizes_keys(t):
                valid = (new < PRUNED) & (pos >= self.cache.first_valid[batch])
                store.set_key_norm(self.layer_idx, batch[valid], head[valid], k[valid])
                k_in = store.normalize_keys(self.layer_idx, batch[enter], head[enter], k_in)
            moved = layout.encode(k_in, v[enter], pos[enter], score[enter])
            if leaves:  # rewrite the tier without the leavers
                raw = self._stored_records(t, group[stay], pos[stay])
                store.clear(self.layer_idx, t)
                store.append(self.layer_idx, t, torch.cat([batch[stay], batch[enter]]),
                             torch.cat([head[stay], head[enter]]), torch.cat([raw, moved]))
            else:  # nobody leaves: only the newcomers are written
                store.append(self.layer_idx, t, batch[enter], head[enter], moved)
            k_dec, v_dec, _, _ = layout.decode(moved)
            if store.quantizes_keys(t):
                k_dec = store.normalize_keys(self.layer_idx, batch[enter], head[enter], k_dec,
                                             inverse=True)
            k[enter], v[enter] = k_dec, v_dec
        keep = ~gone
        working.rebuild(k[keep], v[keep], pos[keep], score[keep], new[keep], group[keep])
        store.release_spare_pages()


class LeanKVCache(Cache):
    """A transformers cache backed by LeanKV's paged, tiered, per-head store."""

    def __init__(self, model_config: Any, config: LeanKVConfig | str | None = None):
        if isinstance(config, str):
            config = LeanKVConfig.preset(config)
        self.config = config or LeanKVConfig.preset("balanced")
        text = text_config(model_config)
        shape = attention_shape(model_config)
        self.num_layers, self.num_heads = shape.num_layers, shape.num_heads
        self.num_kv_heads, self.head_dim = shape.num_kv_heads, shape.head_dim
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
        """Bytes of the store's pages in use (with slack), page tables and counters."""
        return self.store.bytes_held() if self.store is not None else 0

    def bytes_reserved(self) -> int:
        """Bytes the store's page pool really has allocated (free pages included)."""
        return self.store.bytes_reserved() if self.store is not None else 0

    def working_set_bytes(self) -> int:
        """Bytes of the de-quantized working sets attention reads (a compute buffer, apart
        from the store)."""
        return sum(layer.working.bytes() for layer in self.layers if layer.working is not None)

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
