"""LeanKV as a KV format of the serving engine (``leanstack.llm.engine``): per-head tiers and
pruning on the engine's byte pages.

Each sequence owns three *arenas*, one per stored tier (full, high, low). An arena is a list of
engine pages viewed as fixed-size head records (``RecordLayout``: key, value, scales, position,
score of one token of one layer and KV head); a page of a lower tier holds more records. New
tokens enter the full tier (``full_bits``). Every ``retier_every`` tokens (every
``PREFILL_RETIER_TOKENS`` during a prefill), tokens are ranked per (layer, KV head) by their
attention significance and demoted to the high or low tier or pruned (``assign_tiers``, the
policy of ``LeanKVCache``). Leavers free their record slots; the arena is compacted (records
from its tail move into the holes) and its surplus pages go back to the engine's pool, so
pruning and demotion really make room for more sequences.

Attention never reads the pages: each sequence keeps a de-quantized working set (the decoded
kept tokens of every layer and head, padded per layer), updated incrementally — new tokens are
decoded once when stored, a re-tier re-decodes only the tokens that changed tier, and pruned
tokens leave masked holes that are squeezed out once they pile up. It is a compute buffer
outside the KV budget (reported by :meth:`TieredSequenceKV.working_set_bytes`). Its keys and
values are held in fp16 whenever no tier stores more than 16 bits (every stored value is then
exact in fp16 or within fp16 rounding of its dequantized value), in fp32 otherwise (the
``exact`` preset), and read as fp32 one layer at a time for attention.

The new tokens of all sequences of a step are stored with one encode per layer
(:meth:`LeanKVFormat.write_batch`), not one per sequence, and the single queries of all
decoding sequences attend in one batched op per layer (:meth:`LeanKVFormat.attend_batch`).

Importing this module registers the ``leankv`` format: ``leankv:PRESET`` or ``leankv:FILE.toml``
(a TOML table of ``LeanKVConfig`` settings, optionally ``preset = "NAME"`` as the base).
"""

from __future__ import annotations

import torch

from leanstack.errors import LeanstackError
from leanstack.leankv.attention import fused_attention, padded_attention
from leanstack.leankv.config import LeanKVConfig
from leanstack.leankv.quant import QUANT_BITS
from leanstack.leankv.records import RecordLayout
from leanstack.leankv.significance import assign_tiers, decision_significance
from leanstack.leankv.store import NUM_TIERS, PRUNED, TIER_FULL
from leanstack.llm.engine.kv_format import ModelShape, PageSource, register_kv_format

EMPTY = -1  # position of an unused working-set slot
# During a prefill, re-tier once this many prompt tokens arrived since the last re-tier (each
# re-tier ranks every stored token, so re-tiering after every small chunk of a prompt that the
# scheduler's prefill budget cut up would cost O(prompt^2)); the first decode step re-tiers the
# rest.
PREFILL_RETIER_TOKENS = 256


class LeanKVFormat:
    """Builds a :class:`TieredSequenceKV` per sequence; ``record_bytes`` is the worst case (every
    head of a token in the full tier), which bounds what one request can ever need."""

    def __init__(self, shape: ModelShape, config: LeanKVConfig, name: str):
        if shape.head_dim % config.group:
            raise LeanstackError(f"LeanKV group {config.group} must divide head_dim "
                                 f"{shape.head_dim}: set group in the preset")
        self.name = name
        self.config = config
        self.shape = shape
        bits = [(config.full_bits, config.full_bits), config.hi_bits, config.lo_bits]
        self.layouts = [RecordLayout(shape.head_dim, kb, vb, config.group) for kb, vb in bits]
        self.record_bytes = shape.num_kv_heads * self.layouts[TIER_FULL].size
        widest = max(b for pair in bits for b in pair)
        self.working_dtype = torch.float32 if widest > 16 else torch.float16

    def new_sequence(self, pages: PageSource) -> TieredSequenceKV:
        return TieredSequenceKV(self, pages)

    def write_batch(self, layer: int, stores: list[TieredSequenceKV], sizes: list[int],
                    pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store the new tokens of several sequences of this format in the full tier, with one
        encode and one decode for all of them: ``stores[i]`` gets ``sizes[i]`` consecutive
        tokens of ``pos`` [n], ``k, v`` [n, heads, dim] (in order)."""
        h, dim, lay = self.shape.num_kv_heads, self.shape.head_dim, self.layouts[TIER_FULL]
        records = lay.encode(k.reshape(-1, dim).float(), v.reshape(-1, dim).float(),
                             pos.repeat_interleave(h), torch.zeros(pos.numel() * h))
        k_dec, v_dec, _, _ = lay.decode(records)
        k_dec, v_dec = k_dec.to(self.working_dtype), v_dec.to(self.working_dtype)
        addresses, start = [], 0
        for store, n in zip(stores, sizes, strict=True):
            rows = slice(start * h, (start + n) * h)
            addresses.append(store._append(layer, pos[start:start + n], k_dec[rows],
                                           v_dec[rows]))
            start += n
        if stores:
            stores[0].source.data.view(-1)[torch.cat(addresses)] = records

    def attend_batch(self, layer: int, stores: list[TieredSequenceKV], sizes: list[int],
                     q: torch.Tensor, q_pos: torch.Tensor, scaling: float) -> torch.Tensor:
        """Attention of the step's queries of several sequences of this format: ``stores[i]``
        owns ``sizes[i]`` consecutive rows of ``q`` [n, q_heads, dim] at ``q_pos`` [n]. The
        single queries of decoding sequences attend together in one batched op
        (:meth:`_attend_decodes`); a longer chunk (a piece of a prompt) attends on its own.
        Returns [n, q_heads, dim]."""
        out = torch.empty_like(q)
        decoders, decode_rows, start = [], [], 0
        for store, n in zip(stores, sizes, strict=True):
            if n == 1:
                decoders.append(store)
                decode_rows.append(start)
            else:
                rows = slice(start, start + n)
                out[rows] = store.attend(layer, q[rows], q_pos[rows], scaling)
            start += n
        if decoders:
            rows = torch.tensor(decode_rows)
            out[rows] = self._attend_decodes(layer, decoders, q[rows], q_pos[rows], scaling)
        return out

    def _attend_decodes(self, layer: int, stores: list[TieredSequenceKV], q: torch.Tensor,
                        q_pos: torch.Tensor, scaling: float) -> torch.Tensor:
        """One query per sequence (``q`` [b, q_heads, dim]) over each of its KV heads' kept
        tokens (all of them precede the query), as :meth:`TieredSequenceKV.attend` would for
        each sequence, mass added to its scores included. The matmuls run sequence by
        sequence, each right after converting that sequence's fp16 keys or values of
        ``layer`` to fp32 (a slice that stays in cache); the masking, softmax and mass (when
        the policy ranks tokens) of all sequences run as one batch over their logits, padded to
        the widest. Returns
        [b, q_heads, dim]."""
        b, h, dim = len(stores), self.shape.num_kv_heads, self.shape.head_dim
        rep = q.shape[1] // h
        widths = [max(int(s.count[layer].max()), 1) for s in stores]
        width = max(widths)
        queries = (q.float() * scaling).view(b, h, rep, dim)
        logits = torch.full((b, h, rep, width), float("-inf"))
        kpos = torch.full((b, h, 1, width), EMPTY, dtype=torch.int64)
        for i, (store, w) in enumerate(zip(stores, widths, strict=True)):
            keys = store.keys[layer, :, :w].float()
            logits[i, :, :, :w] = torch.bmm(queries[i], keys.transpose(1, 2))
            kpos[i, :, 0, :w] = store.pos[layer, :, :w]
        logits.masked_fill_(kpos < 0, float("-inf"))  # pruned holes, unused slots
        probs = torch.softmax(logits, -1).nan_to_num_(0.0)  # nothing visible: zeros
        out = torch.empty(b, h, rep, dim)
        for i, (store, w) in enumerate(zip(stores, widths, strict=True)):
            torch.bmm(probs[i, :, :, :w], store.values[layer, :, :w].float(), out=out[i])
        if self.config.ranks_tokens:
            mass = probs.sum(2)  # [b, h, width], over the query heads of each KV head
            decay = self.config.score_decay
            for i, (store, w) in enumerate(zip(stores, widths, strict=True)):
                if decay < 1.0:
                    store.score[layer].mul_(decay)
                store.score[layer, :, :w] += mass[i, :, :w]
        return out.view(b, h * rep, dim)


class TieredSequenceKV:
    """The KV of one sequence: records in per-tier arenas of engine pages, plus its working set."""

    def __init__(self, fmt: LeanKVFormat, source: PageSource):
        self.fmt, self.config, self.source = fmt, fmt.config, source
        s = fmt.shape
        self.layers, self.heads, self.dim = s.num_layers, s.num_kv_heads, s.head_dim
        self.per_page = [source.page_bytes // lay.size for lay in fmt.layouts]
        if min(self.per_page) < 1:
            raise LeanstackError(f"an engine page of {source.page_bytes} B cannot hold one "
                                 f"LeanKV record: use bigger pages")
        self.arena_pages: list[list[int]] = [[] for _ in range(NUM_TIERS)]
        self._page_ids: list[torch.Tensor | None] = [None] * NUM_TIERS  # arena_pages as tensors
        self._record_bytes = [torch.arange(lay.size) for lay in fmt.layouts]
        self._heads = torch.arange(self.heads).unsqueeze(1)  # [heads, 1]
        self.arena_count = [0] * NUM_TIERS  # live records; always slots 0..count-1
        self.tokens_written = 0  # positions whose KV is stored (all layers)
        self.tokens_reserved = 0  # positions the full arena has room for
        self.since_retier = 0
        self.pruned_mass = torch.zeros(self.layers * self.heads)
        self.key_norm: torch.Tensor | None = None  # [2, layers * heads, dim] centre, scale
        self._alloc_working_set(0)

    # --- working set ---------------------------------------------------------------------
    def _alloc_working_set(self, cap: int) -> None:
        lh = (self.layers, self.heads, cap)
        self.keys = torch.zeros(*lh, self.dim, dtype=self.fmt.working_dtype)
        self.values = torch.zeros(*lh, self.dim, dtype=self.fmt.working_dtype)
        self.pos = torch.full(lh, EMPTY, dtype=torch.int64)
        self.score = torch.zeros(lh)
        self.tier = torch.zeros(lh, dtype=torch.int8)
        self.slot = torch.zeros(lh, dtype=torch.int32)  # record slot in the arena of its tier
        self.count = torch.zeros(self.layers, self.heads, dtype=torch.int64)

    def _grow_working_set(self, cap: int) -> None:
        n = self.pos.shape[2]
        if cap <= n:
            return
        old = (self.keys, self.values, self.pos, self.score, self.tier, self.slot, self.count)
        # grow by an eighth: the copy is rare next to the steps, the slack is the memory
        self._alloc_working_set(max(cap, n + max(n // 8, 32)))
        for new, prev in zip((self.keys, self.values, self.pos, self.score, self.tier,
                              self.slot), old[:-1], strict=True):
            new[:, :, :n] = prev
        self.count = old[-1]

    def working_set_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in
                   (self.keys, self.values, self.pos, self.score, self.tier, self.slot))

    # --- pages ---------------------------------------------------------------------------
    @property
    def pages(self) -> list[int]:
        return [p for arena in self.arena_pages for p in arena]

    def stored_bytes(self) -> int:
        """Bytes of the records this sequence holds (its pages minus their slack)."""
        return sum(c * lay.size for c, lay in zip(self.arena_count, self.fmt.layouts,
                                                  strict=True))

    def _pages_for(self, tier: int, records: int) -> int:
        return -(-records // self.per_page[tier])

    def reserve(self, num_tokens: int) -> bool:
        """Make room in the full tier for positions up to ``num_tokens``; False (nothing taken)
        if the pool has too few free pages."""
        extra = max(0, num_tokens - self.tokens_written) * self.layers * self.heads
        need = self._pages_for(TIER_FULL, self.arena_count[TIER_FULL] + extra) \
            - len(self.arena_pages[TIER_FULL])
        if need > 0:
            pages = self.source.take(need)
            if pages is None:
                return False
            self.arena_pages[TIER_FULL].extend(pages)
            self._page_ids[TIER_FULL] = None
        self.tokens_reserved = max(self.tokens_reserved, num_tokens)
        return True

    def _addresses(self, tier: int, slots: torch.Tensor) -> torch.Tensor:
        """Flat byte index [n, record size] of record ``slots`` of ``tier``'s arena."""
        per, size = self.per_page[tier], self.fmt.layouts[tier].size
        pages = self._page_ids[tier]
        if pages is None:
            pages = self._page_ids[tier] = torch.tensor(self.arena_pages[tier], dtype=torch.int64)
        base = pages[slots // per] * self.source.page_bytes + (slots % per) * size
        return base.unsqueeze(1) + self._record_bytes[tier]

    def _store(self, tier: int, slots: torch.Tensor, records: torch.Tensor) -> None:
        self.source.data.view(-1)[self._addresses(tier, slots)] = records

    def _load(self, tier: int, slots: torch.Tensor) -> torch.Tensor:
        return self.source.data.view(-1)[self._addresses(tier, slots)]

    # --- keys: per-channel normalisation before quantizing --------------------------------
    def _normalizes(self, tier: int) -> bool:
        return (tier != TIER_FULL and self.config.key_channel_norm
                and self.fmt.layouts[tier].key_bits in QUANT_BITS)

    def _set_key_norm(self, group: torch.Tensor, k: torch.Tensor) -> None:
        """Fix each (layer, head)'s key centre and scale from its current keys (once)."""
        n = self.layers * self.heads
        idx = group.unsqueeze(1).expand_as(k)
        hi = torch.full((n, self.dim), -torch.inf).scatter_reduce_(0, idx, k, "amax")
        lo = torch.full((n, self.dim), torch.inf).scatter_reduce_(0, idx, k, "amin")
        seen = torch.isfinite(hi)
        centre = torch.where(seen, (hi + lo) / 2, 0.0)
        scale = torch.where(seen, (hi - lo) / 2, 1.0).clamp_min(1e-3)
        self.key_norm = torch.stack([centre, scale]).half().float()

    # --- the step --------------------------------------------------------------------------
    def write(self, layer: int, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store new tokens (``pos`` [n], ``k, v`` [n, heads, dim]) of ``layer`` in the full
        tier and append their decoded values to the working set."""
        self.fmt.write_batch(layer, [self], [pos.numel()], pos, k, v)

    def _append(self, layer: int, pos: torch.Tensor, k_dec: torch.Tensor,
                v_dec: torch.Tensor) -> torch.Tensor:
        """Take full-tier slots for ``n`` new tokens of ``layer`` and append their decoded keys
        and values ([n * heads, dim], token-major) to the working set; returns the byte
        addresses [n * heads, record size] their records go to."""
        n, h = pos.numel(), self.heads
        if layer == 0:  # room for the rest of the reserved prompt too: one allocation
            ahead = max(n, self.tokens_reserved - self.tokens_written)
            self._grow_working_set(int(self.count.max()) + ahead)
        slots = self.arena_count[TIER_FULL] + torch.arange(n * h)  # token-major, then head
        self.arena_count[TIER_FULL] += n * h
        at = self.count[layer].unsqueeze(1)  # [heads, n]
        if n > 1:
            at = at + torch.arange(n)
        rows = self._heads.expand_as(at)
        # slots at or beyond count are fresh: score 0 and tier TIER_FULL (0) already
        self.keys[layer, rows, at] = k_dec.view(n, h, self.dim).transpose(0, 1)
        self.values[layer, rows, at] = v_dec.view(n, h, self.dim).transpose(0, 1)
        self.pos[layer, rows, at] = pos.unsqueeze(0).expand_as(at)
        self.slot[layer, rows, at] = slots.view(n, h).t().to(self.slot.dtype)
        self.count[layer] += n
        if layer == self.layers - 1:
            self.tokens_written = int(pos.max()) + 1
        return self._addresses(TIER_FULL, slots)

    def attend(self, layer: int, q: torch.Tensor, q_pos: torch.Tensor,
               scaling: float) -> torch.Tensor:
        """Queries ``q`` [n, q_heads, dim] at ``q_pos`` over each head's kept tokens; accumulates
        their attention mass as significance when the policy ranks tokens. Returns [n, q_heads,
        dim]."""
        width = max(int(self.count[layer].max()), 1)
        if not self.config.ranks_tokens:  # no mass to keep: one fused op
            return fused_attention(q.transpose(0, 1).unsqueeze(0),
                                   self.keys[layer, :, :width].float(),
                                   self.values[layer, :, :width].float(),
                                   self.pos[layer, :, :width], self.heads, q_pos, None,
                                   scaling)[0]
        decay, n = self.config.score_decay, q_pos.numel()
        weight = None
        if decay < 1.0 and n > 1:  # older queries of a chunk count less
            weight = decay ** torch.arange(n - 1, -1, -1, dtype=torch.float32)
        keys, values = self.keys[layer, :, :width].float(), self.values[layer, :, :width].float()
        out, mass = padded_attention(q.transpose(0, 1).unsqueeze(0), keys, values,
                                     self.pos[layer, :, :width],
                                     self.heads, q_pos, None, scaling, weight)
        if decay < 1.0:
            self.score[layer].mul_(decay ** n)
        self.score[layer, :, :width] += mass
        return out[0]

    def end_step(self, seq_len: int, num_tokens: int) -> None:
        """After a forward over ``num_tokens`` new tokens: re-tier every ``retier_every`` tokens,
        during a prefill every ``PREFILL_RETIER_TOKENS`` (or after a chunk at least as long)."""
        self.since_retier += num_tokens
        every = PREFILL_RETIER_TOKENS if num_tokens > 1 else self.config.retier_every
        if self.since_retier >= max(every, self.config.retier_every):
            self.retier(seq_len)

    # --- tiers -----------------------------------------------------------------------------
    def retier(self, seq_len: int) -> bool:
        """Demote or prune tokens by significance, compact the arenas, return spare pages.
        Returns False (nothing changed) when the pool cannot supply the pages it would need."""
        cfg = self.config
        valid = self.pos >= 0
        li, hi_, si = valid.nonzero(as_tuple=True)
        if li.numel() == 0:
            return True
        group = li * self.heads + hi_
        pos, score, tier = self.pos[valid], self.score[valid], self.tier[valid].long()
        zero = torch.zeros(1, dtype=torch.int64)
        batch = torch.zeros_like(group)
        new = assign_tiers(cfg, group, pos, score, tier, seq_len, zero, batch,
                           None if cfg.reprune else self.pruned_mass)
        counts = [int((new == t).sum()) for t in range(NUM_TIERS)]
        reserve = max(0, self.tokens_reserved - seq_len) * self.layers * self.heads
        need = [self._pages_for(t, counts[t] + (reserve if t == TIER_FULL else 0))
                for t in range(NUM_TIERS)]
        have = [len(p) for p in self.arena_pages]
        deficit = sum(max(0, n - h) for n, h in zip(need, have, strict=True))
        surplus = sum(max(0, h - n) for n, h in zip(need, have, strict=True))
        if deficit > self.source.num_free + surplus:
            return False
        self.since_retier = 0
        gone = new == PRUNED
        sig = decision_significance(cfg, pos[gone], score[gone], seq_len, zero, batch[gone])
        self.pruned_mass.index_add_(0, group[gone], sig)
        slot = self.slot[valid].long()
        entering = []
        for t in range(NUM_TIERS):  # 1. compact what stays, freeing the leavers' slots
            stay, enter = (tier == t) & (new == t), (tier != t) & (new == t)
            slot[stay] = self._compact(t, slot[stay])
            slot[enter] = counts[t] - int(enter.sum()) + torch.arange(int(enter.sum()))
            entering.append(enter)
        released = []  # 2. exchange pages with the pool
        for t in range(NUM_TIERS):
            released += self.arena_pages[t][need[t]:]
            del self.arena_pages[t][need[t]:]
        self.source.give(released)
        self._page_ids = [None] * NUM_TIERS
        for t in range(NUM_TIERS):
            if need[t] > len(self.arena_pages[t]):
                pages = self.source.take(need[t] - len(self.arena_pages[t]))
                assert pages is not None  # checked above
                self.arena_pages[t].extend(pages)
        self.arena_count = counts
        for t, enter in enumerate(entering):  # 3. encode the newcomers of each tier
            if not bool(enter.any()):
                continue
            at = (li[enter], hi_[enter], si[enter])
            if self._normalizes(t) and self.key_norm is None:
                kept = new < PRUNED
                self._set_key_norm(group[kept],
                                   self.keys[li[kept], hi_[kept], si[kept]].float())
            k_in = self.keys[at].float()
            if self._normalizes(t):
                norm = self.key_norm[:, group[enter]]
                k_in = (k_in - norm[0]) / norm[1]
            lay = self.fmt.layouts[t]
            records = lay.encode(k_in, self.values[at].float(), pos[enter], score[enter])
            self._store(t, slot[enter], records)
            k_dec, v_dec, _, _ = lay.decode(records)
            if self._normalizes(t):
                k_dec = k_dec * norm[1] + norm[0]
            dtype = self.fmt.working_dtype
            self.keys[at], self.values[at] = k_dec.to(dtype), v_dec.to(dtype)
        # 4. the working set: new tiers and slots in place; pruned tokens leave holes, which
        # are squeezed out once they are a quarter of the slots in use
        self.tier[valid], self.slot[valid] = new.to(self.tier.dtype), slot.to(self.slot.dtype)
        self.pos[li[gone], hi_[gone], si[gone]] = EMPTY
        self.score[li[gone], hi_[gone], si[gone]] = 0.0
        kept = int((~gone).sum())
        if int(self.count.sum()) - kept > max(kept // 3, 1):
            self._squeeze()
        return True
    def _compact(self, tier: int, slots: torch.Tensor) -> torch.Tensor:
        """Move the staying records of ``tier`` (at ``slots``) into slots 0..n-1; return their
        new slots. Only records beyond n move, into the holes below n."""
        n = slots.numel()
        movers = slots >= n
        if not bool(movers.any()):
            return slots
        used = torch.zeros(n, dtype=torch.bool)
        used[slots[~movers]] = True
        holes = (~used).nonzero(as_tuple=True)[0]
        records = self._load(tier, slots[movers])
        slots = slots.clone()
        slots[movers] = holes
        self._store(tier, holes, records)
        return slots

    def _squeeze(self) -> None:
        """Move every (layer, head)'s kept tokens to the front of its slots, in order."""
        valid = self.pos >= 0
        li, hi_, si = valid.nonzero(as_tuple=True)
        counts = valid.sum(2)
        flat = counts.view(-1)
        starts = torch.cumsum(flat, 0) - flat
        at = torch.arange(li.numel()) - starts[li * self.heads + hi_]
        parts = [t[valid] for t in (self.keys, self.values, self.pos, self.score, self.tier,
                                    self.slot)]
        width = int(flat.max()) if li.numel() else 0
        self._alloc_working_set(width + max(width // 8, self.config.retier_every))
        for dst, src in zip((self.keys, self.values, self.pos, self.score, self.tier,
                             self.slot), parts, strict=True):
            dst[li, hi_, at] = src
        self.count = counts

    # --- checks ------------------------------------------------------------------------------
    def tier_counts(self) -> list[int]:
        """Kept (layer, head, token) entries per tier: full, high, low."""
        return [int(((self.tier == t) & (self.pos >= 0)).sum()) for t in range(NUM_TIERS)]

    def read_back(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode every kept token from the pages (in working-set order): keys and values in
        the working set's dtype, positions. Equals the working set when the store is
        consistent."""
        valid = self.pos >= 0
        li, hi_, _ = valid.nonzero(as_tuple=True)
        group, tier, slot = li * self.heads + hi_, self.tier[valid], self.slot[valid].long()
        k = torch.zeros(group.numel(), self.dim)
        v, pos = torch.zeros_like(k), torch.zeros_like(group)
        for t in range(NUM_TIERS):
            sel = tier == t
            if not bool(sel.any()):
                continue
            k_t, v[sel], pos[sel], _ = self.fmt.layouts[t].decode(self._load(t, slot[sel]))
            if self._normalizes(t):
                norm = self.key_norm[:, group[sel]]
                k_t = k_t * norm[1] + norm[0]
            k[sel] = k_t
        dtype = self.fmt.working_dtype
        return k.to(dtype), v.to(dtype), pos


def _factory(shape: ModelShape, spec: str) -> LeanKVFormat:
    spec = spec or "balanced"
    return LeanKVFormat(shape, LeanKVConfig.load(spec), f"leankv:{spec}")


register_kv_format("leankv", _factory)
