"""The scheduler: which sequences run in the next step, and how many of their tokens.

Each step has a token budget. Running sequences go first, oldest first: a decoding sequence
takes one token, one still in prefill takes the next chunk of its prompt (chunked prefill, mixed
with decodes in the same step). Then waiting sequences are admitted in arrival order while their
KV fits in the free pages and the budget lasts; admission never skips the head of the queue, so a
big request is not starved by small ones behind it. While any sequence is decoding, prompt
chunks together take at most ``max_prefill_tokens`` of the step (a chunked-prefill budget): a
step's time is mostly its prompt tokens, and every decoding sequence waits for the whole step, so
the cap keeps time per output token from growing with each admitted long prompt. When a
running sequence needs a page and none is free, the youngest running sequence is preempted: its
pages are freed and it returns to the front of the queue, to be recomputed from its tokens
later (vLLM's recompute preemption).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from leanstack.errors import LeanstackError
from leanstack.llm.engine.kv_manager import KVManager
from leanstack.llm.engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledChunk:
    """``num_tokens`` tokens of ``seq`` starting at token ``start`` run in this step."""

    seq: Sequence
    start: int
    num_tokens: int

    @property
    def samples(self) -> bool:
        """Whether this chunk reaches the sequence's last token, so a new token is sampled."""
        return self.start + self.num_tokens == self.seq.num_tokens


@dataclass
class SchedulerOutput:
    chunks: list[ScheduledChunk] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)


class Scheduler:
    """Waiting and running queues over a :class:`KVManager`."""

    def __init__(self, kv: KVManager, max_num_seqs: int = 64, max_batched_tokens: int = 512,
                 max_prefill_tokens: int | None = None):
        if max_num_seqs < 1 or max_batched_tokens < 1:
            raise LeanstackError("max_num_seqs and max_batched_tokens must be >= 1")
        if max_prefill_tokens is not None and max_prefill_tokens < 1:
            raise LeanstackError(f"max_prefill_tokens must be >= 1 (or unset for no cap), got "
                                 f"{max_prefill_tokens}")
        self.kv = kv
        self.max_num_seqs = max_num_seqs
        self.max_batched_tokens = max_batched_tokens
        self.max_prefill_tokens = max_prefill_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        """Queue a new sequence; refuse one that could never fit in the whole pool."""
        need = seq.max_total_tokens - 1  # the last sampled token never needs KV
        capacity = self.kv.capacity_tokens(seq.kv_format)
        if need > capacity:
            raise LeanstackError(
                f"request needs KV for {need} tokens but the whole KV budget holds {capacity} "
                f"in format {seq.kv_format}: shorten the prompt or max_tokens, or raise the budget")
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, seq: Sequence, reason: str) -> None:
        """Take ``seq`` out of the queues for good and free its pages."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.kv.free(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        self.running.remove(seq)
        self.kv.free(seq)
        seq.num_computed = 0
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.waiting.appendleft(seq)
        self.num_preemptions += 1
        out.preempted.append(seq)

    def schedule(self) -> SchedulerOutput:
        """Pick this step's chunks (allocating their pages), preempting if pages run out."""
        out = SchedulerOutput()
        budget = self.max_batched_tokens
        prefill = budget  # prompt tokens this step may still take
        if self.max_prefill_tokens is not None and any(
                s.num_tokens - s.num_computed == 1 for s in self.running):
            prefill = min(prefill, self.max_prefill_tokens)
        for seq in list(self.running):  # oldest first
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING:  # preempted earlier in this loop
                continue
            left = seq.num_tokens - seq.num_computed
            n = min(left, budget) if left == 1 else min(left, budget, prefill)
            if n == 0:  # a prompt chunk, and the prefill budget is spent
                continue
            while not self.kv.allocate(seq, seq.num_computed + n):
                victim = self.running[-1]  # the youngest
                self._preempt(victim, out)
                if victim is seq:
                    break
            if seq.status is SequenceStatus.RUNNING:
                out.chunks.append(ScheduledChunk(seq, seq.num_computed, n))
                budget -= n
                if left > 1:
                    prefill -= n
        while (self.waiting and min(budget, prefill) > 0 and not out.preempted
               and len(self.running) < self.max_num_seqs):
            seq = self.waiting[0]
            # admit only when the whole prompt (plus recomputed output) fits in free pages
            if not self.kv.allocate(seq, seq.num_tokens):
                break
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            n = min(seq.num_tokens, budget, prefill)
            out.chunks.append(ScheduledChunk(seq, 0, n))
            budget -= n
            prefill -= n
        return out
