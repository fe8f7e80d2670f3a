"""One pool of fixed-byte pages, managed with batched tensor operations.

Every page is either free (``owner == -1``) or owned by exactly one page table (``owner`` holds
the table id, ``slot`` the page's index inside that table). Free page ids also sit on a stack
tensor, so an allocation takes its pages off the top in one slice. Allocation, freeing and
compaction for thousands of tables are a handful of vector ops (slices, prefix sums, scatters)
with no Python loop per page; the same code runs on a GPU.
"""

from __future__ import annotations

import torch

from leanstack.errors import LeanstackError

FREE = -1


class PoolExhausted(LeanstackError):
    """Raised when an allocation asks for more pages than are free."""


class PagePool:
    """``num_pages`` pages of ``page_bytes`` bytes each, plus the tables that own them."""

    def __init__(self, num_pages: int, page_bytes: int, device: str | torch.device = "cpu"):
        if num_pages < 0 or page_bytes <= 0:
            raise LeanstackError(
                f"bad page pool {num_pages} x {page_bytes} B: need pages >= 0 and page bytes > 0"
            )
        self.page_bytes = page_bytes
        self.data = torch.zeros(num_pages, page_bytes, dtype=torch.uint8, device=device)
        self.owner = torch.full((num_pages,), FREE, dtype=torch.int64, device=device)
        self.slot = torch.full((num_pages,), FREE, dtype=torch.int64, device=device)
        # free_stack[:num_free] holds the free ids, lowest id on top (at the end)
        self.free_stack = torch.arange(num_pages - 1, -1, -1, dtype=torch.int64, device=device)
        self._num_free = num_pages

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
        """Bytes of page-table metadata for the allocated pages (owner + slot entries)."""
        per_page = self.owner.element_size() + self.slot.element_size()
        return self.num_allocated * per_page

    def grow(self, num_pages: int) -> None:
        """Enlarge the pool to ``num_pages`` pages (new pages are free)."""
        extra = num_pages - self.num_pages
        if extra <= 0:
            return
        dev = self.data.device
        self.data = torch.cat([self.data, torch.zeros(extra, self.page_bytes, dtype=torch.uint8,
                                                      device=dev)])
        pad = torch.full((extra,), FREE, dtype=torch.int64, device=dev)
        old = self.owner.numel()
        self.owner = torch.cat([self.owner, pad])
        self.slot = torch.cat([self.slot, pad.clone()])
        new_ids = torch.arange(num_pages - 1, old - 1, -1, dtype=torch.int64, device=dev)
        spare = torch.full((old - self._num_free,), FREE, dtype=torch.int64, device=dev)
        self.free_stack = torch.cat([new_ids, self.free_stack[:self._num_free], spare])
        self._num_free += extra

    def page_counts(self, tables: torch.Tensor) -> torch.Tensor:
        """Pages currently owned by each table id in ``tables``."""
        owned = torch.sort(self.owner[self.owner != FREE]).values
        tables = tables.to(owned.device, torch.int64)
        return (torch.searchsorted(owned, tables, right=True)
                - torch.searchsorted(owned, tables, right=False))

    def allocate(self, tables: torch.Tensor, counts: torch.Tensor,
                 first_slot: torch.Tensor | None = None) -> torch.Tensor:
        """Append ``counts[i]`` pages to table ``tables[i]`` (tables distinct), all at once.

        ``first_slot`` (each table's current page count) saves a search when the caller knows it.
        Returns the new page ids, grouped by table in the given order and by slot within a table.
        Takes free pages from the top of the stack: after compaction, the lowest ids first.
        """
        tables = tables.to(self.owner.device, torch.int64)
        counts = counts.to(self.owner.device, torch.int64)
        if bool((counts < 0).any()):
            raise LeanstackError("page counts must be >= 0")
        total = int(counts.sum())
        if total > self._num_free:
            raise PoolExhausted(
                f"page pool exhausted: need {total} pages, {self._num_free} free of "
                f"{self.num_pages}; give the pool more pages or compress harder"
            )
        page_ids = self.free_stack[self._num_free - total:self._num_free].flip(0)
        self._num_free -= total
        base = self.page_counts(tables) if first_slot is None else first_slot.to(torch.int64)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(total, device=counts.device) - torch.repeat_interleave(starts, counts)
        self.owner[page_ids] = torch.repeat_interleave(tables, counts)
        self.slot[page_ids] = torch.repeat_interleave(base, counts) + rank
        return page_ids

    def free(self, tables: torch.Tensor) -> int:
        """Release every page of the given tables; returns how many pages were freed."""
        hit = torch.nonzero(torch.isin(self.owner, tables.to(self.owner.device, torch.int64)))
        hit = hit.squeeze(1).flip(0)  # pushed highest first, so low ids end up on top
        self.owner[hit] = FREE
        self.slot[hit] = FREE
        n = hit.numel()
        self.free_stack[self._num_free:self._num_free + n] = hit
        self._num_free += n
        return n

    def pages_of(self, tables: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Page ids of each table in slot order, concatenated in the order of ``tables``,
        and the page count per table."""
        tables = tables.to(self.owner.device, torch.int64)
        owned = torch.nonzero(torch.isin(self.owner, tables)).squeeze(1)  # only these tables
        key = self.owner[owned] * (self.num_pages + 1) + self.slot[owned]
        order = owned[torch.argsort(key)]
        sorted_owner = self.owner[order]
        lo = torch.searchsorted(sorted_owner, tables, right=False)
        counts = torch.searchsorted(sorted_owner, tables, right=True) - lo
        offsets = torch.cumsum(counts, 0) - counts
        total = int(counts.sum())
        idx = torch.repeat_interleave(lo - offsets, counts) + torch.arange(total, device=lo.device)
        return order[idx], counts

    def compact(self) -> torch.Tensor:
        """Move every allocated page to the front (keeping their order) so the free pages form
        one contiguous run at the end. Returns ``new_id_of_old`` for callers holding page ids."""
        free = self.owner == FREE
        perm = torch.argsort(free.to(torch.int8), stable=True)  # allocated first, old order kept
        self.data = self.data[perm]
        self.owner = self.owner[perm]
        self.slot = self.slot[perm]
        new_id_of_old = torch.empty_like(perm)
        new_id_of_old[perm] = torch.arange(perm.numel(), device=perm.device)
        n = perm.numel()
        self.free_stack = torch.arange(n - 1, -1, -1, dtype=torch.int64, device=perm.device)
        return new_id_of_old

    def is_compact(self) -> bool:
        """True when all free pages lie after all allocated pages."""
        n = self.num_allocated
        return bool((self.owner[:n] != FREE).all()) and bool((self.owner[n:] == FREE).all())
