"""A request inside the engine: its tokens, where it stands, and its KV pages."""

from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from leanstack.llm.engine.sampling import SamplingParams

_ids = itertools.count()


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """Prompt plus generated tokens. ``num_computed`` tokens have their KV in ``pages``;
    the scheduler feeds the rest (a prefill chunk, or the one newest token when decoding)."""

    prompt_ids: list[int]
    params: SamplingParams
    kv_format: str
    request_id: str = ""
    seq_id: int = field(default_factory=lambda: next(_ids))
    output_ids: list[int] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed: int = 0
    pages: list[int] = field(default_factory=list)
    kv_store: Any = None  # the sequence's KV object in a tiered format (``SequenceKV``)
    finish_reason: str | None = None
    text: str = ""  # detokenized output (stop strings cut)
    sent_chars: int = 0  # how much of ``text`` has been handed out already
    arrival: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    finished_at: float | None = None
    num_preemptions: int = 0
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        if not self.request_id:
            self.request_id = f"req-{self.seq_id}"
        if not self.params.greedy:
            self.generator = torch.Generator()
            seed = self.params.seed if self.params.seed is not None else torch.seed()
            self.generator.manual_seed(seed)

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def max_total_tokens(self) -> int:
        """Tokens this sequence may ever hold (prompt + every allowed output token)."""
        return len(self.prompt_ids) + self.params.max_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
