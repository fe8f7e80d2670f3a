"""The paged KV store: per (request, layer, KV head, tier) page tables over one :class:`PagePool`.

Tier 0 is the full-precision tier, 1 the high tier, 2 the low tier; a page of a lower tier holds
more tokens because its records are smaller. All reads and writes for a layer touch every
request and head at once through flat index tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from leanstack.errors import LeanstackError
from leanstack.leankv.config import LeanKVConfig
from leanstack.leankv.pages import PagePool
from leanstack.leankv.quant import QUANT_BITS
from leanstack.leankv.records import RecordLayout

TIER_FULL, TIER_HI, TIER_LO, PRUNED = 0, 1, 2, 3
NUM_TIERS = 3


@dataclass
class TokenRecords:
    """Stored tokens of one layer and tier, flattened across requests and heads."""

    records: torch.Tensor  # uint8 [n, record size]
    batch: torch.Tensor  # int64 [n] request index
    head: torch.Tensor  # int64 [n] KV head index
    byte_base: torch.Tensor  # int64 [n] where each record starts in the pool's flat bytes


class KVStore:
    """Paged storage for ``batch_size`` requests of a model with the given shape."""

    def __init__(self, config: LeanKVConfig, num_layers: int, num_kv_heads: int, head_dim: int,
                 batch_size: int, device: str | torch.device = "cpu", initial_pages: int = 64):
        bits = [(config.full_bits, config.full_bits), config.hi_bits, config.lo_bits]
        self.layouts = [RecordLayout(head_dim, kb, vb, config.group) for kb, vb in bits]
        if head_dim % self.layouts[0].group:
            raise LeanstackError(f"group {config.group} must divide head_dim {head_dim}")
        self.tokens_per_page = [config.page_bytes // lay.size for lay in self.layouts]
        if min(self.tokens_per_page) < 1:
            biggest = max(lay.size for lay in self.layouts)
            raise LeanstackError(
                f"page_bytes {config.page_bytes} is smaller than one record ({biggest} B): "
                "raise page_bytes"
            )
        self.num_layers, self.num_kv_heads, self.batch_size = num_layers, num_kv_heads, batch_size
        self._table_ids: torch.Tensor | None = None
        self.pool = PagePool(initial_pages, config.page_bytes, device)
        self.length = torch.zeros(batch_size * num_layers * num_kv_heads * NUM_TIERS,
                                  dtype=torch.int64, device=device)
        # Significance each (layer, request, head) has pruned so far (see assign_tiers).
        self.pruned_mass = torch.zeros(num_layers, batch_size * num_kv_heads,
                                       dtype=torch.float32, device=device)
        # Per-channel key centre and scale per (layer, request, head), fp16, set once per layer.
        self.key_norm: torch.Tensor | None = None
        self.key_norm_set = torch.zeros(num_layers, dtype=torch.bool)
        if config.key_channel_norm and any(lay.key_bits in QUANT_BITS for lay in self.layouts[1:]):
            self.key_norm = torch.zeros(num_layers, 2, batch_size * num_kv_heads, head_dim,
                                        dtype=torch.float16, device=device)

    def table_ids(self, layer: int, tier: int) -> torch.Tensor:
        """Table ids of (every request, every KV head) of ``layer`` and ``tier``, request-major."""
        if self._table_ids is None:  # [layer, tier, request x head], computed once
            dev = self.length.device
            b = torch.arange(self.batch_size, device=dev).repeat_interleave(self.num_kv_heads)
            h = torch.arange(self.num_kv_heads, device=dev).repeat(self.batch_size)
            layers = torch.arange(self.num_layers, device=dev).view(-1, 1, 1)
            tiers = torch.arange(NUM_TIERS, device=dev).view(1, -1, 1)
            self._table_ids = ((b * self.num_layers + layers) * self.num_kv_heads + h) \
                * NUM_TIERS + tiers
        return self._table_ids[layer, tier]

    def _bytes_index(self, base: torch.Tensor, size: int) -> torch.Tensor:
        return base.unsqueeze(1) + torch.arange(size, device=base.device)

    def _locate(self, tables: torch.Tensor, index: torch.Tensor, tier: int) -> torch.Tensor:
        """Byte base of token ``index[i]`` within table ``tables[i]``."""
        uniq, inverse = torch.unique(tables, return_inverse=True)
        pages, counts = self.pool.pages_of(uniq)
        first = torch.cumsum(counts, 0) - counts
        tpp = self.tokens_per_page[tier]
        page = pages[first[inverse] + index // tpp]
        return page * self.pool.page_bytes + (index % tpp) * self.layouts[tier].size

    def append(self, layer: int, tier: int, batch: torch.Tensor, head: torch.Tensor,
               records: torch.Tensor) -> None:
        """Append encoded records of ``tier`` to the tables of (batch[i], head[i])."""
        if records.shape[0] == 0:
            return
        tables = ((batch * self.num_layers + layer) * self.num_kv_heads + head) * NUM_TIERS + tier
        order = torch.argsort(tables, stable=True)
        tables, records = tables[order], records[order]
        uniq, counts = torch.unique_consecutive(tables, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(tables.numel(), device=tables.device) - starts.repeat_interleave(counts)
        old = self.length[uniq]
        tpp = self.tokens_per_page[tier]
        need = (old + counts + tpp - 1) // tpp - (old + tpp - 1) // tpp
        shortfall = int(need.sum()) - self.pool.num_free
        if shortfall > 0:  # grow by an eighth at least, so growth stays amortised
            self.pool.grow(self.pool.num_pages + max(shortfall, self.pool.num_pages // 8))
        self.pool.allocate(uniq, need, first_slot=(old + tpp - 1) // tpp)
        self.length[uniq] = old + counts
        base = self._locate(tables, old.repeat_interleave(counts) + rank, tier)
        flat = self.pool.data.view(-1)
        flat[self._bytes_index(base, records.shape[1])] = records

    def append_one_each(self, layer: int, tier: int, records: torch.Tensor) -> None:
        """Append one record to every (request, KV head) table of ``layer`` and ``tier``
        (``records`` in :meth:`table_ids` order): a decode step, without sorting or lookups."""
        tables = self.table_ids(layer, tier)
        old = self.length[tables]
        tpp = self.tokens_per_page[tier]
        need = old % tpp == 0
        n_need = int(need.sum())
        if n_need:
            shortfall = n_need - self.pool.num_free
            if shortfall > 0:
                self.pool.grow(self.pool.num_pages + max(shortfall, self.pool.num_pages // 8))
            self.pool.allocate(tables[need], torch.ones(n_need, dtype=torch.int64,
                                                        device=tables.device))
        page = self.pool.table_pages[tables, old // tpp].long()
        base = page * self.pool.page_bytes + (old % tpp) * self.layouts[tier].size
        self.pool.data.view(-1)[self._bytes_index(base, records.shape[1])] = records
        self.length[tables] = old + 1

    def read(self, layer: int, tier: int) -> TokenRecords:
        """Every stored record of ``layer`` and ``tier``, with its request and head."""
        tables = self.table_ids(layer, tier)
        lengths = self.length[tables]
        n = int(lengths.sum())
        size, tpp = self.layouts[tier].size, self.tokens_per_page[tier]
        if n == 0:
            empty = torch.zeros(0, dtype=torch.int64, device=tables.device)
            return TokenRecords(torch.zeros(0, size, dtype=torch.uint8), empty, empty, empty)
        pages, page_counts = self.pool.pages_of(tables)
        first_page = torch.cumsum(page_counts, 0) - page_counts
        starts = torch.cumsum(lengths, 0) - lengths
        which = torch.repeat_interleave(torch.arange(tables.numel(), device=tables.device), lengths)
        index = torch.arange(n, device=tables.device) - starts[which]
        # Gather whole pages (row copies), view them as records, keep the filled slots.
        rows = self.pool.data[pages][:, :tpp * size].reshape(-1, size)
        records = rows[first_page[which] * tpp + index]
        page = pages[first_page[which] + index // tpp]
        base = page * self.pool.page_bytes + (index % tpp) * size
        return TokenRecords(records, which // self.num_kv_heads, which % self.num_kv_heads, base)

    def write_scores(self, tier: int, byte_base: torch.Tensor, scores: torch.Tensor) -> None:
        """Overwrite the significance score field of the records at ``byte_base``."""
        off = self.layouts[tier].score_offset
        raw = scores.to(torch.float16).reshape(-1, 1).view(torch.uint8)
        self.pool.data.view(-1)[self._bytes_index(byte_base + off, 2)] = raw

    def quantizes_keys(self, tier: int) -> bool:
        """Whether keys of ``tier`` are stored channel-normalized (and so need the stats).
        The full tier never is: its tokens arrive before the statistics exist."""
        return (tier != TIER_FULL and self.key_norm is not None
                and self.layouts[tier].key_bits in QUANT_BITS)

    def set_key_norm(self, layer: int, batch: torch.Tensor, head: torch.Tensor,
                     k: torch.Tensor) -> None:
        """Fix ``layer``'s per-channel key centre and scale from the keys ``k`` [n, dim] of
        (batch[i], head[i]) (a no-op once set): every channel maps onto [-1, 1]."""
        if self.key_norm is None or bool(self.key_norm_set[layer]):
            return
        idx = (batch * self.num_kv_heads + head).unsqueeze(1).expand_as(k)
        n_groups, dim = self.key_norm.shape[2:]
        hi = torch.full((n_groups, dim), -torch.inf, device=k.device)
        lo = torch.full((n_groups, dim), torch.inf, device=k.device)
        hi.scatter_reduce_(0, idx, k.float(), "amax")
        lo.scatter_reduce_(0, idx, k.float(), "amin")
        seen = torch.isfinite(hi)
        self.key_norm[layer, 0] = torch.where(seen, (hi + lo) / 2, 0.0).half()
        self.key_norm[layer, 1] = torch.where(seen, (hi - lo) / 2, 1.0).clamp_min(1e-3).half()
        self.key_norm_set[layer] = True

    def normalize_keys(self, layer: int, batch: torch.Tensor, head: torch.Tensor,
                       k: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        """Keys of (batch[i], head[i]) mapped to (``inverse``: back from) normalized space."""
        idx = batch * self.num_kv_heads + head
        centre, scale = self.key_norm[layer, 0, idx].float(), self.key_norm[layer, 1, idx].float()
        return k * scale + centre if inverse else (k - centre) / scale

    def clear(self, layer: int, tier: int) -> None:
        """Drop every token of ``layer`` and ``tier`` and free their pages."""
        tables = self.table_ids(layer, tier)
        self.pool.free(tables)
        self.length[tables] = 0

    def tokens_held(self) -> int:
        """Records stored, over all requests, layers, heads and tiers."""
        return int(self.length.sum())

    def release_spare_pages(self) -> int:
        """Give free pages back once they exceed an eighth of those in use (keeping a
        sixteenth as headroom), so the pool really holds about what the pages in use need.
        Returns the pages released."""
        used = self.pool.num_allocated
        if self.pool.num_free <= used // 8 + 8:
            return 0
        return self.pool.trim(keep_free=used // 16)

    def bytes_reserved(self) -> int:
        """Bytes the pool really has allocated: every page, free ones included, plus the
        same metadata as :meth:`bytes_held`."""
        return (self.bytes_held() + self.pool.num_free * self.pool.page_bytes)

    def bytes_held(self) -> int:
        """Bytes this store really holds: its pages (slack included) plus page tables,
        per-table token counts, key-channel statistics and pruned-mass counters."""
        norm = self.key_norm.numel() * self.key_norm.element_size() if self.key_norm is not None \
            else 0
        return (self.pool.num_allocated * self.pool.page_bytes + self.pool.table_bytes()
                + self.length.numel() * self.length.element_size() + norm
                + self.pruned_mass.numel() * self.pruned_mass.element_size())
