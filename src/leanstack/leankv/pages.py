"""One pool of fixed-byte pages, managed with batched tensor operations.

Every page is either free (``owner == -1``) or owned by exactly one page table (``owner`` holds
the table id, ``slot`` the page's index inside that table). Free page ids sit on a stack tensor,
so an allocation takes its pages off the top in one slice. A dense per-table index
(``table_pages[table, slot]``, padded with -1, and ``table_len[table]``; vLLM's block tables,
batched) lets freeing and lookups gather just the rows they need, so every operation but
compaction costs in proportion to the tables and pages it touches, not to the pool. Each is a
handful of vector ops (slices, prefix sums, gathers, scatters) with no Python loop per page or
per table; the same code runs on a GPU. Metadata is int32; page ids handed out are int64.
"""

from __future__ import annotations

import torch

from leanstack.errors import LeanstackError

FREE = -1
MIN_SLOTS = 4  # the index never narrows below this many slots per table
_INT32_MAX = 2**31 - 1


class PoolExhausted(LeanstackError):
    """Raised when an allocation asks for more pages than are free."""


class PagePool:
    """``num_pages`` pages of ``page_bytes`` bytes each, plus the tables that own them."""

    def __init__(self, num_pages: int, page_bytes: int, device: str | torch.device = "cpu"):
        if num_pages < 0 or num_pages > _INT32_MAX or page_bytes <= 0:
            raise LeanstackError(
                f"bad page pool {num_pages} x {page_bytes} B: need 0 <= pages < 2**31 and "
                "page bytes > 0"
            )
        self.page_bytes = page_bytes
        self.data = torch.zeros(num_pages, page_bytes, dtype=torch.uint8, device=device)
        self.owner = torch.full((num_pages,), FREE, dtype=torch.int32, device=device)
        self.slot = torch.full((num_pages,), FREE, dtype=torch.int32, device=device)
        # free_stack[:num_free] holds the free ids, lowest id on top (at the end) after compaction
        self.free_stack = torch.arange(num_pages - 1, -1, -1, dtype=torch.int32, device=device)
        self._num_free = num_pages
        # table_pages[t, :table_len[t]] are table t's pages in slot order; the rest is FREE.
        # Both grow on demand (amortised doubling) as table ids and table lengths arrive.
        self.table_pages = torch.full((0, 0), FREE, dtype=torch.int32, device=device)
        self.table_len = torch.zeros(0, dtype=torch.int32, device=device)

    @property
    def num_pages(self) -> int:
        return self.owner.numel()

    @property
    def num_free(self) -> int:
        return self._num_free

    @property
    def num_allocated(self) -> int:
        return self.num_pages - self.num_free

    def table_bytes(self) -> int:
        """Bytes of page-table metadata: the per-table index as allocated (padding included)
        plus the owner and slot entries of the allocated pages."""
        index = (self.table_pages.numel() * self.table_pages.element_size()
                 + self.table_len.numel() * self.table_len.element_size())
        per_page = self.owner.element_size() + self.slot.element_size()
        return index + self.num_allocated * per_page

    def grow(self, num_pages: int) -> None:
        """Enlarge the pool to ``num_pages`` pages (new pages are free)."""
        extra = num_pages - self.num_pages
        if extra <= 0:
            return
        if num_pages > _INT32_MAX:
            raise LeanstackError(f"page pool of {num_pages} pages is too big: the limit is 2**31")
        dev = self.data.device
        self.data = torch.cat([self.data, torch.zeros(extra, self.page_bytes, dtype=torch.uint8,
                                                      device=dev)])
        pad = torch.full((extra,), FREE, dtype=torch.int32, device=dev)
        old = self.owner.numel()
        self.owner = torch.cat([self.owner, pad])
        self.slot = torch.cat([self.slot, pad.clone()])
        new_ids = torch.arange(num_pages - 1, old - 1, -1, dtype=torch.int32, device=dev)
        spare = torch.full((old - self._num_free,), FREE, dtype=torch.int32, device=dev)
        self.free_stack = torch.cat([new_ids, self.free_stack[:self._num_free], spare])
        self._num_free += extra

    def trim(self, keep_free: int = 0) -> int:
        """Give back all but ``keep_free`` free pages: compact, then drop the free tail (page
        ids of allocated pages change as in :meth:`compact`). Returns the pages released."""
        if keep_free < 0:
            raise LeanstackError(f"keep_free must be >= 0, got {keep_free}")
        extra = self._num_free - keep_free
        if extra <= 0:
            return 0
        if not self.is_compact():
            self.compact()
        n = self.num_pages - extra
        used = self.num_allocated
        self.data = self.data[:n].clone()
        self.owner = self.owner[:n].clone()
        self.slot = self.slot[:n].clone()
        self.free_stack = torch.cat([
            torch.arange(n - 1, used - 1, -1, dtype=torch.int32, device=self.owner.device),
            torch.full((used,), FREE, dtype=torch.int32, device=self.owner.device)])
        self._num_free = keep_free
        return extra

    def page_counts(self, tables: torch.Tensor) -> torch.Tensor:
        """Pages currently owned by each table id in ``tables`` (int64)."""
        return self._lengths(tables.to(self.owner.device, torch.int64))

    def allocate(self, tables: torch.Tensor, counts: torch.Tensor,
                 first_slot: torch.Tensor | None = None) -> torch.Tensor:
        """Append ``counts[i]`` pages to table ``tables[i]`` (tables distinct), all at once.

        ``first_slot``, if given, is each table's current page count as the caller knows it;
        it is checked against the pool's own index. Returns the new page ids (int64), grouped by
        table in the given order and by slot within a table. Takes free pages from the top of
        the stack: after compaction, the lowest ids first.
        """
        dev = self.owner.device
        tables = tables.to(dev, torch.int64)
        counts = counts.to(dev, torch.int64)
        if tables.numel() == 0:
            return torch.zeros(0, dtype=torch.int64, device=dev)
        lo, hi = (int(v) for v in torch.aminmax(tables))
        if lo < 0 or hi >= _INT32_MAX:
            raise LeanstackError(f"page table ids must lie in [0, 2**31 - 1), got {lo}..{hi}")
        least, most = (int(v) for v in torch.aminmax(counts))
        if least < 0:
            raise LeanstackError("page counts must be >= 0")
        total = int(counts.sum())
        if total > self._num_free:
            raise PoolExhausted(
                f"page pool exhausted: need {total} pages, {self._num_free} free of "
                f"{self.num_pages}; give the pool more pages or compress harder"
            )
        self._reserve(rows=hi + 1, cols=0)
        base = self.table_len[tables]
        if first_slot is not None and bool((first_slot.to(dev) != base).any()):
            raise LeanstackError("first_slot disagrees with the pool's page counts of those "
                                 "tables: pass each table's current page count, or None")
        end = (base + counts).to(torch.int32)
        self._reserve(rows=0, cols=int(end.max()))
        page_ids = self.free_stack[self._num_free - total:self._num_free].flip(0)
        self._num_free -= total
        if most <= 1:  # a decode step: at most one page per table, no prefix sums needed
            if least == 0:
                keep = counts == 1
                tables, base, end = tables[keep], base[keep], end[keep]
            rows, cols = tables, base
        else:
            starts = torch.cumsum(counts, 0) - counts
            rows = torch.repeat_interleave(tables, counts, output_size=total)
            cols = (torch.repeat_interleave(base - starts, counts, output_size=total)
                    + torch.arange(total, device=dev)).to(torch.int32)
        self.table_pages[rows, cols] = page_ids
        self.table_len[tables] = end
        self.owner[page_ids] = rows.to(torch.int32)
        self.slot[page_ids] = cols
        return page_ids.long()

    def free(self, tables: torch.Tensor) -> int:
        """Release every page of the given tables (repeats count once); returns how many pages
        were freed."""
        tables = torch.unique(tables.to(self.owner.device, torch.int64))  # sorted
        if tables.numel() == 0:
            return 0
        if int(tables[0]) < 0:
            raise LeanstackError("page table ids must be >= 0")
        if int(tables[-1]) >= self.table_len.numel():  # tables never seen own nothing
            tables = tables[:int(torch.searchsorted(tables, self.table_len.numel()))]
        lens = self.table_len[tables].long()
        flat = self._flat_slots(tables, lens)
        pages = self.table_pages.view(-1)[flat]
        self.table_pages.view(-1)[flat] = FREE
        self.table_len[tables] = 0
        self.owner[pages] = FREE
        self.slot[pages] = FREE
        n = pages.numel()
        self.free_stack[self._num_free:self._num_free + n] = pages
        self._num_free += n
        self._shrink()
        return n

    def pages_of(self, tables: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Page ids (int64) of each table in slot order, concatenated in the order of
        ``tables``, and the page count per table."""
        tables = tables.to(self.owner.device, torch.int64)
        lens = self._lengths(tables)
        flat = self._flat_slots(tables, lens)
        return self.table_pages.view(-1)[flat].long(), lens

    def compact(self) -> torch.Tensor:
        """Move every allocated page to the front (keeping their order) so the free pages form
        one contiguous run at the end. Returns ``new_id_of_old`` for callers holding page ids."""
        free = self.owner == FREE
        perm = torch.argsort(free.to(torch.int8), stable=True)  # allocated first, old order kept
        self.data = self.data[perm]
        self.owner = self.owner[perm]
        self.slot = self.slot[perm]
        n = perm.numel()
        new_id_of_old = torch.empty_like(perm)
        new_id_of_old[perm] = torch.arange(n, device=perm.device)
        # index -1 (padding) picks the appended FREE, so padding stays padding
        remap = torch.cat([new_id_of_old.to(torch.int32),
                           torch.tensor([FREE], dtype=torch.int32, device=perm.device)])
        self.table_pages = remap[self.table_pages]
        self.free_stack = torch.arange(n - 1, -1, -1, dtype=torch.int32, device=perm.device)
        return new_id_of_old

    def is_compact(self) -> bool:
        """True when all free pages lie after all allocated pages."""
        n = self.num_allocated
        return bool((self.owner[:n] != FREE).all()) and bool((self.owner[n:] == FREE).all())

    def _lengths(self, tables: torch.Tensor) -> torch.Tensor:
        """``table_len`` of ``tables`` (int64), 0 for ids beyond the index."""
        if tables.numel() == 0:
            return torch.zeros(0, dtype=torch.int64, device=tables.device)
        lo, hi = (int(v) for v in torch.aminmax(tables))
        if lo < 0:
            raise LeanstackError("page table ids must be >= 0")
        known = self.table_len.numel()
        if hi < known:
            return self.table_len[tables].long()
        if known == 0:
            return torch.zeros_like(tables)
        inside = tables < known
        return torch.where(inside, self.table_len[tables.clamp(max=known - 1)], 0).long()

    def _flat_slots(self, tables: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """Positions in ``table_pages.view(-1)`` of slots ``0..lens[i]-1`` of ``tables[i]``,
        concatenated in order (int64)."""
        ends = torch.cumsum(lens, 0)
        total = int(ends[-1]) if ends.numel() else 0
        width = self.table_pages.shape[1]
        return (torch.repeat_interleave(tables * width - (ends - lens), lens, output_size=total)
                + torch.arange(total, device=lens.device))

    def _shrink(self) -> None:
        """Narrow the index once the longest table uses under half its slots (a prefill's
        burst of pages must not pin a wide, mostly padding index: it counts as bytes held)."""
        width = self.table_pages.shape[1]
        longest = int(self.table_len.max()) if self.table_len.numel() else 0
        if width > MIN_SLOTS and 2 * longest < width:
            keep = max(MIN_SLOTS, longest + longest // 4)
            self.table_pages = self.table_pages[:, :keep].clone()

    def _reserve(self, rows: int, cols: int) -> None:
        """Grow the index to at least ``rows`` tables (doubling) and ``cols`` slots each
        (by a quarter, so padding stays small)."""
        old_rows, old_cols = self.table_pages.shape
        if rows <= old_rows and cols <= old_cols:
            return
        new_rows = max(rows, 2 * old_rows) if rows > old_rows else old_rows
        new_cols = max(cols, old_cols + old_cols // 4, MIN_SLOTS) if cols > old_cols else old_cols
        grown = torch.full((new_rows, new_cols), FREE, dtype=torch.int32,
                           device=self.table_pages.device)
        grown[:old_rows, :old_cols] = self.table_pages
        self.table_pages = grown
        extra = new_rows - old_rows
        self.table_len = torch.cat([self.table_len, self.table_len.new_zeros(extra)])
