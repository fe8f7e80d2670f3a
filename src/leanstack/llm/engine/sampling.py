"""Sampling parameters of a request and the per-token sampler (greedy, temperature, top-k,
top-p)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from leanstack.errors import LeanstackError


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks its tokens. ``temperature`` 0 means greedy; ``top_k`` 0 and
    ``top_p`` 1 switch those filters off; generation ends at ``max_tokens``, at the model's end
    token (unless ``ignore_eos``) or at the first of the ``stop`` strings (cut from the text)."""

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = field(default_factory=tuple)
    seed: int | None = None
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(s for s in self.stop if s))
        if self.max_tokens <= 0:
            raise LeanstackError(f"max_tokens must be > 0, got {self.max_tokens}")
        if self.temperature < 0:
            raise LeanstackError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise LeanstackError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise LeanstackError(f"top_k must be >= 0 (0 = off), got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def sample_token(logits: torch.Tensor, params: SamplingParams,
                 generator: torch.Generator | None) -> int:
    """Pick the next token from one row of logits [vocab]."""
    if params.greedy:
        return int(torch.argmax(logits))
    scores = logits.float() / params.temperature
    if params.top_k and params.top_k < scores.numel():
        kth = torch.topk(scores, params.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        cum = torch.softmax(sorted_scores, -1).cumsum(-1)
        drop = cum - torch.softmax(sorted_scores, -1) >= params.top_p  # keep the first to cross
        sorted_scores = sorted_scores.masked_fill(drop, float("-inf"))
        scores = torch.full_like(scores, float("-inf")).scatter(0, order, sorted_scores)
    probs = torch.softmax(scores, -1)
    return int(torch.multinomial(probs, 1, generator=generator))
