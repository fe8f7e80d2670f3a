"""Attention over the store: each (request, KV head) attends to its own variable-length set of
kept tokens, held de-quantized in one padded batch per layer. Registered with transformers as
the ``leankv`` attention implementation."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

import torch

ATTENTION_NAME = "leankv"
# The LeanKVCache whose update() ran last in this context; its layer owns the coming attention.
ACTIVE_CACHE: ContextVar[Any] = ContextVar("leankv_active_cache", default=None)


QUERY_CHUNK = 256  # queries per attention block (bounds a long prefill's logits)


def padded_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                     kpos: torch.Tensor, num_kv_heads: int, q_pos: torch.Tensor,
                     mask: torch.Tensor | None, scaling: float,
                     query_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Grouped-query attention where KV head ``g = b * num_kv_heads + h`` sees only its own
    tokens, all groups in one batched op.

    ``query`` is [B, Hq, Q, D]; ``keys, values`` [G, W, D] hold each group's kept tokens in
    slots, ``kpos`` [G, W] their cache indices (-1 marks an empty slot); ``q_pos`` [Q] are the
    queries' cache indices. ``mask`` is transformers' 4D mask over cache indices (bool, or float
    with 0 = attend) or None for plain causal. Returns the output [B, Q, Hq, D] and the attention
    mass [G, W] each slot received (summed over the queries, each scaled by ``query_weight`` [Q]
    if given, and over the query heads that share its KV head).
    """
    b_size, hq, q_len, dim = query.shape
    n_groups, width = kpos.shape
    rep = hq // num_kv_heads
    qh = (query.float() * scaling).reshape(n_groups, rep, q_len, dim)  # scaled once, not logits
    out = torch.empty(n_groups, rep, q_len, dim, dtype=torch.float32, device=query.device)
    mass = torch.zeros(n_groups, width, dtype=torch.float32, device=query.device)
    m = _group_mask(mask, num_kv_heads)
    keys_t = keys.transpose(1, 2)
    for s in range(0, q_len, QUERY_CHUNK):
        e = min(q_len, s + QUERY_CHUNK)
        c = e - s
        logits = torch.bmm(qh[:, :, s:e].reshape(n_groups, rep * c, dim), keys_t)
        # (logits row r = head_in_group * c + q)
        allowed = _visible(kpos, q_pos[s:e], m, s)
        logits.view(n_groups, rep, -1, width).masked_fill_(~allowed.unsqueeze(1), float("-inf"))
        probs = torch.softmax(logits, -1).nan_to_num_(0.0)  # nothing visible: zeros
        out[:, :, s:e] = torch.bmm(probs, values).view(n_groups, rep, c, dim)
        if query_weight is not None:
            probs = probs * query_weight[s:e].repeat(rep).view(1, -1, 1)
        mass += probs.sum(1)
    out = out.view(b_size, hq, q_len, dim).transpose(1, 2)
    return out.to(query.dtype), mass


def _group_mask(mask: torch.Tensor | None, num_kv_heads: int) -> torch.Tensor | None:
    """transformers' 4D mask [B, 1, Q, total] as a bool mask per KV group [G, Q, total]."""
    if mask is None:
        return None
    m = mask[:, 0]
    return (m if m.dtype == torch.bool else m == 0).repeat_interleave(num_kv_heads, 0)


def _visible(kpos: torch.Tensor, q_pos: torch.Tensor, group_mask: torch.Tensor | None,
             first_query: int) -> torch.Tensor:
    """Which slots each query sees, [G, Q, W], shared by the query heads of a group: filled
    slots at or before the query's position and, with a mask, those it allows (queries from
    ``first_query`` on)."""
    allowed = (kpos.unsqueeze(1) >= 0) & (kpos.unsqueeze(1) <= q_pos.view(1, -1, 1))
    if group_mask is not None:
        idx = kpos.clamp_min(0).unsqueeze(1).expand(-1, q_pos.numel(), -1)
        allowed = allowed & torch.gather(
            group_mask[:, first_query:first_query + q_pos.numel()], 2, idx)
    return allowed


def fused_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                    kpos: torch.Tensor, num_kv_heads: int, q_pos: torch.Tensor,
                    mask: torch.Tensor | None, scaling: float) -> torch.Tensor:
    """The output of :func:`padded_attention` (same arguments and layout) without the attention
    mass, in one fused ``scaled_dot_product_attention`` per block of queries: for policies that
    never rank tokens by significance. Returns [B, Q, Hq, D]."""
    b_size, hq, q_len, dim = query.shape
    n_groups, width = kpos.shape
    rep = hq // num_kv_heads
    qh = query.float().reshape(n_groups, rep, q_len, dim)
    k, v = keys.unsqueeze(1), values.unsqueeze(1)  # [G, 1, W, D]: one KV head per group
    m = _group_mask(mask, num_kv_heads)
    out = torch.empty(n_groups, rep, q_len, dim, dtype=torch.float32, device=query.device)
    for s in range(0, q_len, QUERY_CHUNK):
        e = min(q_len, s + QUERY_CHUNK)
        allowed = _visible(kpos, q_pos[s:e], m, s).unsqueeze(1)
        out[:, :, s:e] = torch.nn.functional.scaled_dot_product_attention(
            qh[:, :, s:e], k, v, attn_mask=allowed, scale=scaling, enable_gqa=True)
    out = out.nan_to_num_(0.0)  # a query that sees nothing (padding) gets zeros
    return out.view(b_size, hq, q_len, dim).transpose(1, 2).to(query.dtype)


def sparse_attention(query: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: torch.Tensor,
                     pos: torch.Tensor, num_kv_heads: int, q_pos: torch.Tensor,
                     mask: torch.Tensor | None, scaling: float,
                     query_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`padded_attention` over flat tokens: ``k, v`` [n, D] hold every kept token,
    ``group[i]`` its (request, head) and ``pos[i]`` its cache index. Returns the output and the
    mass [n] each token received."""
    n_groups = query.shape[0] * num_kv_heads
    counts = torch.bincount(group, minlength=n_groups)
    order = torch.argsort(group, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(group)
    slot[order] = torch.arange(group.numel(), device=group.device) - starts[group[order]]
    width = max(int(counts.max()) if group.numel() else 0, 1)
    keys = torch.zeros(n_groups, width, k.shape[-1], dtype=torch.float32, device=query.device)
    vals = torch.zeros_like(keys)
    kpos = torch.full((n_groups, width), -1, dtype=torch.int64, device=query.device)
    keys[group, slot] = k.float()
    vals[group, slot] = v.float()
    kpos[group, slot] = pos
    out, mass = padded_attention(query, keys, vals, kpos, num_kv_heads, q_pos, mask, scaling,
                                 query_weight)
    return out, mass[group, slot]


def leankv_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                     value: torch.Tensor, attention_mask: torch.Tensor | None,
                     scaling: float | None = None, dropout: float = 0.0,
                     **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers attention function: attend over the LeanKV store when ``key`` came from a
    :class:`LeanKVCache`, otherwise fall back to SDPA (so other caches keep working)."""
    cache = ACTIVE_CACHE.get()
    layer = cache.layers[module.layer_idx] if cache is not None else None
    if layer is None or not layer.owns(key):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      scaling=scaling, dropout=dropout, **kwargs)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    return layer.attend(query, attention_mask, scaling), None


def register_attention() -> None:
    """Make ``leankv`` a known attention implementation (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, leankv_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
