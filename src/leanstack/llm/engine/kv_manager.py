"""The KV manager: a fixed byte budget cut into equal pages, handed to sequences page by page.

Free pages sit on a stack (vLLM's block manager style); a sequence owns a list of page ids in
token order. Each KV format views the same pool rows its own way (see ``kv_format``), so
requests with different formats share one budget. A sequence of a tiered format keeps its KV in
its own ``SequenceKV``, which takes pages from and gives pages back to the same free stack.
"""

from __future__ import annotations

import torch

from leanstack.errors import LeanstackError
from leanstack.llm.engine.kv_format import (
    KVFormat,
    ModelShape,
    canonical_name,
    is_tiered,
    make_kv_format,
)
from leanstack.llm.engine.sequence import Sequence


class _SequencePages:
    """The pool as seen by one sequence's tiered KV: taking or giving pages updates the
    sequence's page list, so freeing the sequence returns everything."""

    def __init__(self, kv: KVManager, seq: Sequence):
        self.kv, self.seq = kv, seq
        self.data = kv.data
        self.page_bytes = kv.page_bytes

    @property
    def num_free(self) -> int:
        return self.kv.num_free

    def take(self, n: int) -> list[int] | None:
        if n > self.kv.num_free:
            return None
        pages = [self.kv._free.pop() for _ in range(n)]
        self.seq.pages.extend(pages)
        return pages

    def give(self, pages: list[int]) -> None:
        gone = set(pages)
        self.seq.pages = [p for p in self.seq.pages if p not in gone]
        self.kv._free.extend(pages)


class KVManager:
    """``budget_bytes // page_bytes`` pages of ``page_bytes`` bytes each."""

    def __init__(self, shape: ModelShape, budget_bytes: int, page_bytes: int,
                 device: str | torch.device = "cpu"):
        if page_bytes <= 0 or budget_bytes < page_bytes:
            raise LeanstackError(f"KV budget {budget_bytes} B is below one page ({page_bytes} B):"
                                 " raise the budget")
        self.shape = shape
        self.page_bytes = page_bytes
        self.num_pages = budget_bytes // page_bytes
        self.data = torch.zeros(self.num_pages, page_bytes, dtype=torch.uint8, device=device)
        self._free = list(range(self.num_pages - 1, -1, -1))
        self._formats: dict[str, tuple[KVFormat, int, torch.Tensor | None]] = {}

    # --- formats -------------------------------------------------------------------------
    def format(self, name: str) -> tuple[KVFormat, int]:
        """The format called ``name`` and how many tokens one page holds in it."""
        name = canonical_name(name)
        if name not in self._formats:
            fmt = make_kv_format(name, self.shape)
            per_token = self.shape.num_layers * fmt.record_bytes
            tpp = self.page_bytes // per_token  # a tiered format's worst case (all in full tier)
            if tpp < 1:
                raise LeanstackError(f"a page of {self.page_bytes} B cannot hold one token of "
                                     f"format {name} ({per_token} B): use bigger pages")
            view = None if is_tiered(fmt) else self.data[:, :tpp * per_token].view(
                self.num_pages, self.shape.num_layers, tpp, fmt.record_bytes)
            self._formats[name] = (fmt, tpp, view)
        fmt, tpp, _ = self._formats[name]
        return fmt, tpp

    def tokens_per_page(self, name: str) -> int:
        return self.format(name)[1]

    def bytes_per_token(self, name: str) -> int:
        """Bytes one token of format ``name`` takes in the store (all layers, K and V)."""
        return self.shape.num_layers * self.format(name)[0].record_bytes

    # --- pages ---------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def used_bytes(self) -> int:
        return (self.num_pages - self.num_free) * self.page_bytes

    @property
    def free_bytes(self) -> int:
        return self.num_free * self.page_bytes

    def pages_needed(self, seq: Sequence, num_tokens: int) -> int:
        """Extra pages ``seq`` (of a per-token format) needs for its first ``num_tokens``."""
        tpp = self.tokens_per_page(seq.kv_format)
        return max(0, -(-num_tokens // tpp) - len(seq.pages))

    def capacity_tokens(self, name: str) -> int:
        """Most tokens a single sequence of format ``name`` can hold in the whole pool."""
        return self.num_pages * self.tokens_per_page(name)

    def allocate(self, seq: Sequence, num_tokens: int) -> bool:
        """Grow ``seq``'s pages to hold ``num_tokens`` tokens; False (nothing taken) if the
        pool has too few free pages."""
        fmt = self.format(seq.kv_format)[0]
        if is_tiered(fmt):
            if seq.kv_store is None:
                seq.kv_store = fmt.new_sequence(_SequencePages(self, seq))
            return seq.kv_store.reserve(num_tokens)
        need = self.pages_needed(seq, num_tokens)
        if need > len(self._free):
            return False
        for _ in range(need):
            seq.pages.append(self._free.pop())
        return True

    def free(self, seq: Sequence) -> None:
        """Return all of ``seq``'s pages to the pool."""
        self._free.extend(reversed(seq.pages))
        seq.pages = []
        seq.kv_store = None

    # --- data ----------------------------------------------------------------------------
    def slots(self, seq: Sequence, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(page id, slot in page) of tokens ``start..end-1`` of ``seq``."""
        tpp = self.tokens_per_page(seq.kv_format)
        pos = torch.arange(start, end)
        pages = torch.tensor(seq.pages, dtype=torch.long)
        return pages[pos // tpp], pos % tpp

    def write(self, name: str, layer: int, pages: torch.Tensor, slots: torch.Tensor,
              k: torch.Tensor, v: torch.Tensor) -> None:
        """Store k, v [n, kv_heads, head_dim] of n tokens at (pages[i], slots[i])."""
        fmt, _, view = self._formats[canonical_name(name)]
        view[pages, layer, slots] = fmt.encode(layer, k, v)

    def read(self, name: str, layer: int, pages: torch.Tensor,
             slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v float32 [n, kv_heads, head_dim] of the tokens at (pages[i], slots[i])."""
        fmt, _, view = self._formats[canonical_name(name)]
        return fmt.decode(layer, view[pages, layer, slots])
