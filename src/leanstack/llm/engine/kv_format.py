"""How the KV of one token is laid out in the engine's byte pages: the pluggable ``KVFormat``.

A page is a row of ``page_bytes`` bytes in the KV manager's pool. A format stores every layer of
a token in the same page: the page is viewed as ``[layers, tokens_per_page, record_bytes]``, and
``record_bytes`` hold the keys and values of all KV heads of one (layer, token). Formats only
encode and decode records; which page a token lives in is the KV manager's business, so formats
with different record sizes share one pool (a page of a smaller format holds more tokens).

A *tiered* format (one with ``new_sequence``, e.g. LeanKV) instead keeps each sequence's KV in
its own object (:class:`SequenceKV`) that takes and gives back whole pages through a
:class:`PageSource`, so it can lay out per-head records, demote and prune them, and return the
bytes it frees to the pool (:class:`TieredFormat`: it stores the new tokens of all its sequences
of a step in one ``write_batch`` call per layer, and they attend in one ``attend_batch`` call).

Formats are looked up by name: ``fp16`` / ``fp32`` (raw paged KV, the vLLM-style baseline) are
built in; further formats register a factory with :func:`register_kv_format` from their own
module, listed in ``FORMAT_MODULES`` so that the engine can import it on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from leanstack.errors import LeanstackError


@dataclass(frozen=True)
class ModelShape:
    """What a format needs to know about the model."""

    num_layers: int
    num_kv_heads: int
    head_dim: int


class KVFormat(Protocol):
    """Encode new keys/values into records and decode stored records for attention."""

    name: str
    record_bytes: int  # bytes of one (layer, token) record: K and V of every KV head

    def encode(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """k, v [n, kv_heads, head_dim] -> records uint8 [n, record_bytes]."""
        ...

    def decode(self, layer: int, records: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """records uint8 [n, record_bytes] -> k, v float32 [n, kv_heads, head_dim]."""
        ...


class PageSource(Protocol):
    """The pool as one sequence's tiered KV sees it."""

    data: torch.Tensor  # uint8 [num_pages, page_bytes], the whole pool
    page_bytes: int

    @property
    def num_free(self) -> int: ...

    def take(self, n: int) -> list[int] | None:
        """``n`` free pages for this sequence, or None (nothing taken) if too few are free."""
        ...

    def give(self, pages: list[int]) -> None:
        """Return pages of this sequence to the pool."""
        ...


class SequenceKV(Protocol):
    """The KV of one sequence in a tiered format."""

    pages: list[int]

    def reserve(self, num_tokens: int) -> bool:
        """Room for positions up to ``num_tokens``; False (nothing taken) if pages are short."""
        ...

    def write(self, layer: int, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store ``k, v`` [n, kv_heads, head_dim] of the tokens at positions ``pos`` [n]."""
        ...

    def attend(self, layer: int, q: torch.Tensor, q_pos: torch.Tensor,
               scaling: float) -> torch.Tensor:
        """Causal attention of queries [n, q_heads, head_dim] over this sequence's KV."""
        ...

    def end_step(self, seq_len: int, num_tokens: int) -> None:
        """Called once after each forward that added ``num_tokens`` tokens."""
        ...

    def working_set_bytes(self) -> int:
        """Bytes of decoded buffers kept for attention, outside the KV budget."""
        ...


class TieredFormat(Protocol):
    """A format whose sequences keep their own KV (:class:`SequenceKV`)."""

    name: str
    record_bytes: int  # worst case of one (layer, token), which bounds a request's pages

    def new_sequence(self, pages: PageSource) -> SequenceKV: ...

    def write_batch(self, layer: int, stores: list, sizes: list[int], pos: torch.Tensor,
                    k: torch.Tensor, v: torch.Tensor) -> None:
        """Store ``sizes[i]`` consecutive new tokens of ``pos`` [n], ``k, v`` [n, heads, dim]
        in ``stores[i]`` (sequences of this format), all in one go."""
        ...

    def attend_batch(self, layer: int, stores: list, sizes: list[int], q: torch.Tensor,
                     q_pos: torch.Tensor, scaling: float) -> torch.Tensor:
        """Causal attention of ``sizes[i]`` consecutive queries of ``q`` [n, q_heads, head_dim]
        at ``q_pos`` [n] over ``stores[i]``'s KV, for every i; returns [n, q_heads, head_dim]."""
        ...


def is_tiered(fmt: object) -> bool:
    """Whether ``fmt`` keeps per-sequence KV objects instead of per-token page records."""
    return hasattr(fmt, "new_sequence")


class RawFormat:
    """Keys and values stored as plain floats (``fp16`` halves the bytes of fp32 models)."""

    def __init__(self, shape: ModelShape, dtype: torch.dtype, name: str):
        self.name = name
        self.shape = shape
        self.dtype = dtype
        self.record_bytes = 2 * shape.num_kv_heads * shape.head_dim * dtype.itemsize

    def encode(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        kv = torch.stack([k, v], 1).to(self.dtype).contiguous()
        return kv.view(torch.uint8).reshape(k.shape[0], self.record_bytes)

    def decode(self, layer: int, records: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.shape
        kv = records.contiguous().view(self.dtype).view(-1, 2, s.num_kv_heads, s.head_dim)
        kv = kv.float()
        return kv[:, 0], kv[:, 1]


FormatFactory = Callable[[ModelShape, str], KVFormat]
_FACTORIES: dict[str, FormatFactory] = {
    "fp16": lambda shape, spec: RawFormat(shape, torch.float16, "fp16"),
    "fp32": lambda shape, spec: RawFormat(shape, torch.float32, "fp32"),
}
# Formats that live outside the engine: name prefix -> module that registers it on import.
FORMAT_MODULES = {"leankv": "leanstack.leankv.engine_format"}
# Short names the server accepts for formats of those modules.
ALIASES = {"lossless": "leankv:lossless", "balanced": "leankv:balanced",
           "aggressive": "leankv:aggressive", "exact": "leankv:exact"}


def register_kv_format(prefix: str, factory: FormatFactory) -> None:
    """Make ``prefix`` (and ``prefix:ARG``) a format name; ``factory(shape, ARG)`` builds it."""
    _FACTORIES[prefix] = factory


def canonical_name(spec: str) -> str:
    """``balanced`` -> ``leankv:balanced``; a ``.toml`` path -> ``leankv:PATH``; else as given."""
    if spec in ALIASES:
        return ALIASES[spec]
    if spec.endswith(".toml") and ":" not in spec:
        return f"leankv:{spec}"
    return spec


def make_kv_format(spec: str, shape: ModelShape) -> KVFormat:
    """Build the format named ``spec`` (``fp16``, ``fp32``, ``balanced``, ``leankv:PRESET``,
    ``leankv:preset.toml``)."""
    spec = canonical_name(spec)
    prefix, _, arg = spec.partition(":")
    if prefix not in _FACTORIES and prefix in FORMAT_MODULES:
        importlib.import_module(FORMAT_MODULES[prefix])
    if prefix not in _FACTORIES:
        known = sorted([*_FACTORIES, *FORMAT_MODULES, *ALIASES])
        raise LeanstackError(f"unknown KV format {spec!r}: use one of {', '.join(known)} "
                             "(or a LeanKV preset .toml)")
    return _FACTORIES[prefix](shape, arg)
