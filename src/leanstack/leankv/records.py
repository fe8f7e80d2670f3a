"""The byte layout of one stored token of one KV head at one precision.

A record is ``key | value | key scale+min | value scale+min | position (int32) | score (fp16)``,
all inside one page, so the store's size is exactly the pages it holds.
"""

from __future__ import annotations

import torch

from leanstack.leankv.quant import RAW_BITS, Quantized, bytes_per_vector, dequantize, quantize


def _view(raw: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Reinterpret uint8 columns as ``dtype`` (copied, so slices of any offset work)."""
    return raw.clone(memory_format=torch.contiguous_format).view(dtype)


class RecordLayout:
    """Encode/decode tokens of one head at ``key_bits``/``value_bits`` to fixed-size byte rows."""

    def __init__(self, head_dim: int, key_bits: int, value_bits: int, group: int):
        self.head_dim = head_dim
        self.key_bits = key_bits
        self.value_bits = value_bits
        self.group = min(group, head_dim)
        self.key_bytes = bytes_per_vector(head_dim, key_bits, self.group)
        self.value_bytes = bytes_per_vector(head_dim, value_bits, self.group)
        self.pos_offset = self.key_bytes + self.value_bytes
        self.score_offset = self.pos_offset + 4
        self.size = self.score_offset + 2

    def _encode_vector(self, x: torch.Tensor, bits: int) -> torch.Tensor:
        if bits in RAW_BITS:
            return x.to(RAW_BITS[bits]).contiguous().view(torch.uint8)
        q = quantize(x, bits, self.group)
        return torch.cat([q.packed, q.scale.view(torch.uint8), q.minimum.view(torch.uint8)], -1)

    def _decode_vector(self, raw: torch.Tensor, bits: int) -> torch.Tensor:
        if bits in RAW_BITS:
            return _view(raw, RAW_BITS[bits]).float()
        n_data = self.head_dim * bits // 8
        n_groups = self.head_dim // self.group
        scale = _view(raw[:, n_data:n_data + 2 * n_groups], torch.float16)
        minimum = _view(raw[:, n_data + 2 * n_groups:], torch.float16)
        return dequantize(Quantized(raw[:, :n_data], scale, minimum), bits, self.group)

    def encode(self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor,
               score: torch.Tensor) -> torch.Tensor:
        """Tokens ``k, v`` [n, head_dim] with positions and scores -> uint8 [n, size]."""
        if self.key_bits == self.value_bits:  # one pass over keys and values together
            kv = self._encode_vector(torch.stack([k, v]), self.key_bits)
            parts = [kv[0], kv[1]]
        else:
            parts = [self._encode_vector(k, self.key_bits),
                     self._encode_vector(v, self.value_bits)]
        return torch.cat([
            *parts,
            pos.to(torch.int32).reshape(-1, 1).view(torch.uint8),
            score.to(torch.float16).reshape(-1, 1).view(torch.uint8),
        ], -1)

    def decode(self, rec: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """uint8 [n, size] -> (k, v, pos int64, score float32 (stored as fp16))."""
        k = self._decode_vector(rec[:, :self.key_bytes], self.key_bits)
        v = self._decode_vector(rec[:, self.key_bytes:self.pos_offset], self.value_bits)
        pos = _view(rec[:, self.pos_offset:self.score_offset], torch.int32)
        score = _view(rec[:, self.score_offset:], torch.float16).float()
        return k, v, pos.reshape(-1).long(), score.reshape(-1)

    def positions(self, rec: torch.Tensor) -> torch.Tensor:
        """uint8 [n, size] -> positions (int64), without decoding keys and values."""
        return _view(rec[:, self.pos_offset:self.score_offset], torch.int32).reshape(-1).long()
