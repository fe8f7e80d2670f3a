"""One batched forward over every scheduled chunk, packed without padding.

The tokens of all chunks (prefill pieces and single decode tokens, of different lengths) are
concatenated into one sequence of T tokens, so every projection and MLP runs once on [T, hidden].
The decoder layers are the transformers Llama modules (embedding, RMSNorm, rotary embedding,
q/k/v/o projections, MLP); only attention is ours: new keys and values go to the paged KV store
through each sequence's format, then each prefill chunk attends to its own context, and all
decode tokens attend together in one batched call over their (gathered) contexts. A sequence of
a tiered format (LeanKV) keeps its KV in its own ``SequenceKV`` instead; the new tokens of all
sequences of one tiered format are stored with one ``write_batch`` call per layer and attend
with one ``attend_batch`` call per layer (which batches their decodes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from leanstack.errors import LeanstackError
from leanstack.llm.engine.kv_format import ModelShape
from leanstack.llm.engine.kv_manager import KVManager
from leanstack.llm.engine.scheduler import ScheduledChunk


def model_shape(model: Any) -> ModelShape:
    """The KV shape of a Llama-family transformers model (raises for other architectures)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    needed = ("q_proj", "k_proj", "v_proj", "o_proj")
    if layers is None or not all(hasattr(layers[0].self_attn, n) for n in needed) \
            or not hasattr(inner, "rotary_emb"):
        raise LeanstackError(f"the engine runs Llama-family models; {type(model).__name__} is "
                             "not one: pass a Llama-architecture model")
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return ModelShape(len(layers), cfg.num_key_value_heads, head_dim)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


@dataclass
class _Context:
    """Where one group of chunks reads its keys/values from (same for every layer)."""

    fmt: str
    pages: torch.Tensor
    slots: torch.Tensor


class ModelRunner:
    """Runs the model's layers over packed chunks with attention over the KV manager's pages."""

    def __init__(self, model: Any, kv: KVManager):
        self.model = model
        self.kv = kv
        self.shape = model_shape(model)
        cfg = model.config
        self.num_heads = cfg.num_attention_heads
        self.scaling = self.shape.head_dim ** -0.5

    @torch.inference_mode()
    def forward(self, chunks: list[ScheduledChunk]) -> torch.Tensor:
        """Run ``chunks``; return the logits [k, vocab] of the k chunks that sample, in order."""
        inner = self.model.model
        ids, pos = [], []
        for c in chunks:
            ids.extend(c.seq.token_ids[c.start:c.start + c.num_tokens])
            pos.append(torch.arange(c.start, c.start + c.num_tokens))
        positions = torch.cat(pos)
        hidden = inner.embed_tokens(torch.tensor(ids).unsqueeze(0))  # [1, T, hidden]
        cos, sin = inner.rotary_emb(hidden, positions.unsqueeze(0))
        cos, sin = cos[0].unsqueeze(1), sin[0].unsqueeze(1)  # [T, 1, d]
        writes, prefills, decodes, tiered = self._plan(chunks)
        hidden = hidden[0]
        for layer_idx, layer in enumerate(inner.layers):
            residual = hidden
            x = layer.input_layernorm(hidden)
            attn = layer.self_attn
            t = x.shape[0]
            q = _rotate(attn.q_proj(x).view(t, self.num_heads, -1), cos, sin)
            k = _rotate(attn.k_proj(x).view(t, self.shape.num_kv_heads, -1), cos, sin)
            v = attn.v_proj(x).view(t, self.shape.num_kv_heads, -1)
            for fmt, rows, pages, slots in writes:
                self.kv.write(fmt, layer_idx, pages, slots, k[rows], v[rows])
            out = torch.empty_like(q)
            for rows, ctx, start in prefills:
                out[rows] = self._prefill_attention(layer_idx, q[rows], ctx, start)
            for rows, ctx, mask in decodes:
                out[rows] = self._decode_attention(layer_idx, q[rows], ctx, mask)
            for fmt, rows, stores, sizes in tiered:
                fmt.write_batch(layer_idx, stores, sizes, positions[rows], k[rows], v[rows])
                out[rows] = fmt.attend_batch(layer_idx, stores, sizes, q[rows], positions[rows],
                                             self.scaling)
            hidden = residual + attn.o_proj(out.reshape(t, -1))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        for c in chunks:
            if c.seq.kv_store is not None:
                c.seq.kv_store.end_step(c.start + c.num_tokens, c.num_tokens)
        last = []
        offset = 0
        for c in chunks:
            offset += c.num_tokens
            if c.samples:
                last.append(offset - 1)
        if not last:
            return torch.zeros(0, self.model.config.vocab_size)
        hidden = inner.norm(hidden[torch.tensor(last)])
        return self.model.lm_head(hidden).float()

    def _plan(self, chunks: list[ScheduledChunk]) -> tuple[list, list, list, list]:
        """Index tensors shared by all layers: where to write new tokens (grouped by format),
        each prefill chunk's context, the padded contexts of the decodes of each format, and
        per tiered format: all its rows, its sequences' KV and their token counts."""
        by_fmt: dict[str, tuple[list, list, list]] = {}
        prefills, decode_groups = [], {}
        by_tiered: dict[str, tuple[list, list, list]] = {}
        offset = 0
        for c in chunks:
            rows = torch.arange(offset, offset + c.num_tokens)
            offset += c.num_tokens
            if c.seq.kv_store is not None:
                group = by_tiered.setdefault(c.seq.kv_format, ([], [], []))
                group[0].append(rows)
                group[1].append(c.seq.kv_store)
                group[2].append(c.num_tokens)
                continue
            end = c.start + c.num_tokens
            pages, slots = self.kv.slots(c.seq, 0, end)
            group = by_fmt.setdefault(c.seq.kv_format, ([], [], []))
            group[0].append(rows)
            group[1].append(pages[c.start:])
            group[2].append(slots[c.start:])
            if c.num_tokens == 1 and c.start > 0:
                decode_groups.setdefault(c.seq.kv_format, []).append((int(rows[0]), pages, slots))
            else:
                prefills.append((rows, _Context(c.seq.kv_format, pages, slots), c.start))
        writes = [(fmt, torch.cat(r), torch.cat(p), torch.cat(s))
                  for fmt, (r, p, s) in by_fmt.items()]
        decodes = []
        for fmt, items in decode_groups.items():
            width = max(p.numel() for _, p, _ in items)
            pages = torch.zeros(len(items), width, dtype=torch.long)
            slots = torch.zeros(len(items), width, dtype=torch.long)
            mask = torch.zeros(len(items), width, dtype=torch.bool)
            for i, (_, p, s) in enumerate(items):
                pages[i, :p.numel()] = p
                slots[i, :s.numel()] = s
                mask[i, :p.numel()] = True
            rows = torch.tensor([r for r, _, _ in items])
            decodes.append((rows, _Context(fmt, pages.view(-1), slots.view(-1)), mask))
        tiered = [(self.kv.format(fmt)[0], torch.cat(r), stores, sizes)
                  for fmt, (r, stores, sizes) in by_tiered.items()]
        return writes, prefills, decodes, tiered

    def _prefill_attention(self, layer: int, q: torch.Tensor, ctx: _Context,
                           start: int) -> torch.Tensor:
        """Causal attention of one chunk's queries [n, Hq, d] over its context."""
        k, v = self.kv.read(ctx.fmt, layer, ctx.pages, ctx.slots)
        n, total = q.shape[0], k.shape[0]
        qh, kh, vh = (x.transpose(0, 1).unsqueeze(0).to(q.dtype) for x in (q, k, v))
        if start == 0:
            o = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=self.scaling,
                                               enable_gqa=True)
        else:
            mask = torch.arange(total).unsqueeze(0) <= torch.arange(start, start + n).unsqueeze(1)
            o = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=self.scaling,
                                               enable_gqa=True)
        return o[0].transpose(0, 1)

    def _decode_attention(self, layer: int, q: torch.Tensor, ctx: _Context,
                          mask: torch.Tensor) -> torch.Tensor:
        """One query per sequence [B, Hq, d] over contexts padded to the longest, masked."""
        b, width = mask.shape
        k, v = self.kv.read(ctx.fmt, layer, ctx.pages, ctx.slots)
        kh = k.view(b, width, *k.shape[1:]).transpose(1, 2).to(q.dtype)
        vh = v.view(b, width, *v.shape[1:]).transpose(1, 2).to(q.dtype)
        o = F.scaled_dot_product_attention(q.unsqueeze(2), kh, vh,
                                           attn_mask=mask[:, None, None, :], scale=self.scaling,
                                           enable_gqa=True)
        return o[:, :, 0]
