"""The de-quantized working set of one layer: every kept token of every (request, KV head) as
floats, in a padded ``[groups, capacity, head_dim]`` layout that attention reads in one batched
op per layer.

It mirrors the paged store and is maintained incrementally: a decode step appends the new
token's decoded record, and a re-tier re-decodes only the tokens that changed tier, so no step
de-quantizes the whole cache. It is a compute buffer (what a GPU kernel would keep in
registers), reported apart from the store's bytes by :meth:`WorkingSet.bytes`.
"""

from __future__ import annotations

import torch

EMPTY = -1  # position of an unused slot


class WorkingSet:
    """Decoded kept tokens of ``groups`` = requests x KV heads of one layer."""

    def __init__(self, groups: int, dim: int, device: torch.device):
        self.groups, self.dim = groups, dim
        self.count = torch.zeros(groups, dtype=torch.int64, device=device)
        self._alloc(0, device)

    def _alloc(self, cap: int, device: torch.device) -> None:
        g, d = self.groups, self.dim
        self.keys = torch.zeros(g, cap, d, dtype=torch.float32, device=device)
        self.values = torch.zeros(g, cap, d, dtype=torch.float32, device=device)
        self.pos = torch.full((g, cap), EMPTY, dtype=torch.int64, device=device)
        self.score = torch.zeros(g, cap, dtype=torch.float32, device=device)
        self.tier = torch.zeros(g, cap, dtype=torch.int8, device=device)

    @property
    def capacity(self) -> int:
        return self.pos.shape[1]

    def _reserve(self, cap: int) -> None:
        if cap <= self.capacity:
            return
        old = (self.keys, self.values, self.pos, self.score, self.tier)
        n = self.capacity
        self._alloc(max(cap, n + n // 2, 16), self.keys.device)
        for new, prev in zip((self.keys, self.values, self.pos, self.score, self.tier), old,
                             strict=True):
            new[:, :n] = prev

    def append(self, keys: torch.Tensor, values: torch.Tensor, pos: torch.Tensor,
               score: torch.Tensor, tier: int) -> None:
        """Add ``q`` tokens to every group: ``keys, values`` [groups, q, dim], ``pos`` [q],
        ``score`` [groups, q]."""
        q = pos.numel()
        self._reserve(int(self.count.max()) + q)
        slots = self.count.unsqueeze(1) + torch.arange(q, device=pos.device)  # [G, q]
        rows = torch.arange(self.groups, device=pos.device).unsqueeze(1).expand_as(slots)
        self.keys[rows, slots] = keys.float()
        self.values[rows, slots] = values.float()
        self.pos[rows, slots] = pos.unsqueeze(0).expand_as(slots)
        self.score[rows, slots] = score.float()
        self.tier[rows, slots] = tier
        self.count += q

    def overwrite_newest(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Replace the keys and values of the ``q`` tokens appended last (``[groups, q, dim]``),
        e.g. full-precision inputs by what the store holds once this step has used them."""
        q = keys.shape[1]
        slots = self.count.unsqueeze(1) - q + torch.arange(q, device=keys.device)
        rows = torch.arange(self.groups, device=keys.device).unsqueeze(1).expand_as(slots)
        self.keys[rows, slots] = keys.float()
        self.values[rows, slots] = values.float()

    def flat(self) -> dict[str, torch.Tensor]:
        """Every kept token, ordered by group then slot: keys, values, pos, score, tier, group."""
        valid = self.pos >= 0
        group = torch.arange(self.groups, device=self.pos.device).unsqueeze(1).expand_as(valid)
        return {"k": self.keys[valid], "v": self.values[valid], "pos": self.pos[valid],
                "score": self.score[valid], "tier": self.tier[valid].long(),
                "group": group[valid]}

    def rebuild(self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, score: torch.Tensor,
                tier: torch.Tensor, group: torch.Tensor) -> None:
        """Replace the contents by the given flat tokens (any order; slots follow positions)."""
        order = torch.argsort(pos, stable=True)
        order = order[torch.argsort(group[order], stable=True)]
        group = group[order]
        counts = torch.bincount(group, minlength=self.groups)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(group.numel(), device=group.device) - starts[group]
        width = int(counts.max()) if group.numel() else 0
        self._alloc(width + width // 4, k.device)
        self.keys[group, slot] = k[order].float()
        self.values[group, slot] = v[order].float()
        self.pos[group, slot] = pos[order]
        self.score[group, slot] = score[order].float()
        self.tier[group, slot] = tier[order].to(torch.int8)
        self.count = counts

    def bytes(self) -> int:
        """Bytes of the buffers, capacity included."""
        return sum(t.numel() * t.element_size() for t in
                   (self.keys, self.values, self.pos, self.score, self.tier, self.count))
