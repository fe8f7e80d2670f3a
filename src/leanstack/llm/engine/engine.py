"""The engine: sequences in, one scheduler step + one batched forward per ``step()``, tokens out."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from leanstack.errors import LeanstackError
from leanstack.llm.engine.kv_format import canonical_name
from leanstack.llm.engine.kv_manager import KVManager
from leanstack.llm.engine.model_runner import ModelRunner, model_shape
from leanstack.llm.engine.sampling import SamplingParams, sample_token
from leanstack.llm.engine.scheduler import Scheduler
from leanstack.llm.engine.sequence import Sequence

PAGE_TOKENS_FP16 = 16  # a page holds this many fp16 tokens (vLLM's default block size)
# Prompt tokens per step while sequences decode; chosen on a small synthetic workload
# (benchmarks/llm_serving.py --prefill-sweep), see docs/llm.md.
MAX_PREFILL_TOKENS = 64


@dataclass
class EngineConfig:
    """Engine limits: the KV byte budget, the default KV format, and the per-step budgets.

    ``max_prefill_tokens`` caps the prompt tokens of a step while any sequence is decoding
    (None: no cap beyond ``max_batched_tokens``); lower protects time per output token, higher
    gives faster time to first token."""

    kv_budget_bytes: int = 64 * 2**20
    kv_format: str = "fp16"
    max_num_seqs: int = 64
    max_batched_tokens: int = 512
    max_prefill_tokens: int | None = MAX_PREFILL_TOKENS
    page_tokens_fp16: int = PAGE_TOKENS_FP16


@dataclass
class RequestOutput:
    """What one step produced for one request: the new text and, at the end, why it stopped."""

    request_id: str
    new_token_ids: list[int]
    new_text: str
    finished: bool
    finish_reason: str | None
    seq: Sequence


class Engine:
    """Continuous batching over a loaded Llama-family model (``leanstack.llm.load_model``)."""

    def __init__(self, loaded: Any, config: EngineConfig | None = None):
        self.config = config or EngineConfig()
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.shape = model_shape(self.model)
        fp16_token = self.shape.num_layers * 2 * self.shape.num_kv_heads * self.shape.head_dim * 2
        self.kv = KVManager(self.shape, self.config.kv_budget_bytes,
                            self.config.page_tokens_fp16 * fp16_token)
        self.kv.format(self.config.kv_format)  # fail early on a bad format name
        self.scheduler = Scheduler(self.kv, self.config.max_num_seqs,
                                   self.config.max_batched_tokens,
                                   self.config.max_prefill_tokens)
        self.runner = ModelRunner(self.model, self.kv)
        self.max_context = int(getattr(self.model.config, "max_position_embeddings", 2048))
        self.eos_ids = self._eos_ids()
        self.sequences: dict[str, Sequence] = {}
        self.generated_tokens = 0

    def _eos_ids(self) -> set[int]:
        ids = set()
        for source in (self.model.generation_config, self.model.config, self.tokenizer):
            eos = getattr(source, "eos_token_id", None)
            if isinstance(eos, int):
                ids.add(eos)
            elif isinstance(eos, list | tuple):
                ids.update(int(e) for e in eos)
        return ids

    # --- requests ------------------------------------------------------------------------
    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None,
                    request_id: str = "", kv_format: str | None = None) -> Sequence:
        """Queue a prompt (text or token ids); ``kv_format`` overrides the engine default."""
        params = params or SamplingParams()
        ids = list(prompt) if not isinstance(prompt, str) else self.tokenizer(
            prompt, add_special_tokens=False)["input_ids"]
        if not ids:
            raise LeanstackError("the prompt is empty: pass at least one token")
        if len(ids) + params.max_tokens > self.max_context:
            raise LeanstackError(
                f"prompt ({len(ids)} tokens) + max_tokens ({params.max_tokens}) exceeds the "
                f"model's context of {self.max_context} tokens: shorten one of them")
        fmt = canonical_name(kv_format or self.config.kv_format)
        self.kv.format(fmt)
        seq = Sequence(prompt_ids=ids, params=params, kv_format=fmt, request_id=request_id)
        if seq.request_id in self.sequences:
            raise LeanstackError(f"request id {seq.request_id!r} is already in the engine")
        self.scheduler.add(seq)
        self.sequences[seq.request_id] = seq
        return seq

    def abort(self, request_id: str) -> None:
        """Stop a request now and free its pages (no-op if it already ended)."""
        seq = self.sequences.pop(request_id, None)
        if seq is not None and not seq.is_finished:
            self.scheduler.finish(seq, "abort")

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    # --- stepping ------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Schedule, run one batched forward, sample; return per-request progress."""
        sched = self.scheduler.schedule()
        if not sched.chunks:
            return []
        logits = self.runner.forward(sched.chunks)
        outputs = []
        row = 0
        for chunk in sched.chunks:
            seq = chunk.seq
            seq.num_computed = chunk.start + chunk.num_tokens
            if not chunk.samples:
                continue
            token = sample_token(logits[row], seq.params, seq.generator)
            row += 1
            outputs.append(self._append(seq, token))
        return outputs

    def _append(self, seq: Sequence, token: int) -> RequestOutput:
        now = time.monotonic()
        if seq.first_token_at is None:
            seq.first_token_at = now
        seq.output_ids.append(token)
        self.generated_tokens += 1
        reason = None
        if token in self.eos_ids and not seq.params.ignore_eos:
            reason = "stop"
            text_ids = seq.output_ids[:-1]
        else:
            text_ids = seq.output_ids
        text = self.tokenizer.decode(text_ids, skip_special_tokens=True)
        for stop in seq.params.stop:
            cut = text.find(stop)
            if cut >= 0:
                text, reason = text[:cut], "stop"
        if reason is None and len(seq.output_ids) >= seq.params.max_tokens:
            reason = "length"
        seq.text = text
        if reason is None:
            # hold back what may still become a stop string or an unfinished character
            hold = max((len(s) - 1 for s in seq.params.stop), default=0)
            ready = len(text) - hold
            while ready > seq.sent_chars and text[ready - 1] == "\ufffd":
                ready -= 1
        else:
            ready = len(text)
            seq.finished_at = now
            self.scheduler.finish(seq, reason)
            self.sequences.pop(seq.request_id, None)
        new_text = text[seq.sent_chars:ready] if ready > seq.sent_chars else ""
        seq.sent_chars = max(seq.sent_chars, ready)
        return RequestOutput(seq.request_id, [token], new_text, reason is not None, reason, seq)

    def generate(self, prompts: list[str] | list[list[int]],
                 params: SamplingParams | list[SamplingParams] | None = None,
                 kv_format: str | None = None) -> list[Sequence]:
        """Run prompts to completion (continuous batching); return their finished sequences."""
        plist = params if isinstance(params, list) else [params or SamplingParams()] * len(prompts)
        if len(plist) != len(prompts):
            raise LeanstackError(f"{len(prompts)} prompts but {len(plist)} sampling params")
        seqs = [self.add_request(p, sp, kv_format=kv_format)
                for p, sp in zip(prompts, plist, strict=True)]
        while any(not s.is_finished for s in seqs):
            self.step()
        return seqs

    # --- state ---------------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """Queue lengths, page use and counters, for /health and metrics."""
        return {
            "running": len(self.scheduler.running),
            "waiting": len(self.scheduler.waiting),
            "kv_pages_total": self.kv.num_pages,
            "kv_pages_free": self.kv.num_free,
            "kv_bytes_used": self.kv.used_bytes,
            "kv_bytes_free": self.kv.free_bytes,
            "kv_working_set_bytes": sum(s.kv_store.working_set_bytes()
                                        for s in self.scheduler.running if s.kv_store is not None),
            "preemptions": self.scheduler.num_preemptions,
            "generated_tokens": self.generated_tokens,
        }
