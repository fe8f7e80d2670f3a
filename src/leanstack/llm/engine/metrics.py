"""Prometheus metrics of the engine: queues, KV bytes, preemptions, tokens/s, TTFT and TPOT."""

from __future__ import annotations

import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from leanstack.llm.engine.sequence import Sequence

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RATE_WINDOW_S = 10.0


class EngineMetrics:
    """One registry per server (so tests can run several servers in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.running = Gauge("leanstack_llm_requests_running", "sequences running", registry=r)
        self.waiting = Gauge("leanstack_llm_requests_waiting", "sequences waiting", registry=r)
        self.kv_used = Gauge("leanstack_llm_kv_bytes_used", "KV bytes in pages held", registry=r)
        self.kv_free = Gauge("leanstack_llm_kv_bytes_free", "KV bytes in free pages", registry=r)
        self.preemptions = Counter("leanstack_llm_preemptions", "sequences preempted",
                                   registry=r)
        self.tokens = Counter("leanstack_llm_generated_tokens", "tokens generated", registry=r)
        self.requests = Counter("leanstack_llm_requests", "requests accepted", registry=r)
        self.aborts = Counter("leanstack_llm_aborted_requests", "requests aborted", registry=r)
        self.tokens_per_s = Gauge("leanstack_llm_tokens_per_second",
                                  f"generated tokens/s over the last {RATE_WINDOW_S:g} s",
                                  registry=r)
        self.ttft = Histogram("leanstack_llm_time_to_first_token_seconds", "TTFT",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("leanstack_llm_time_per_output_token_seconds",
                              "mean time per output token after the first, per request",
                              buckets=LATENCY_BUCKETS, registry=r)
        self._preempted_seen = 0
        self._recent: deque[tuple[float, int]] = deque()

    def observe_engine(self, stats: dict[str, int], new_tokens: int, step_s: float) -> None:
        self.running.set(stats["running"])
        self.waiting.set(stats["waiting"])
        self.kv_used.set(stats["kv_bytes_used"])
        self.kv_free.set(stats["kv_bytes_free"])
        if stats["preemptions"] > self._preempted_seen:
            self.preemptions.inc(stats["preemptions"] - self._preempted_seen)
            self._preempted_seen = stats["preemptions"]
        now = time.monotonic()
        if new_tokens:
            self.tokens.inc(new_tokens)
            self._recent.append((now, new_tokens))
        while self._recent and self._recent[0][0] < now - RATE_WINDOW_S:
            self._recent.popleft()
        self.tokens_per_s.set(sum(n for _, n in self._recent) / RATE_WINDOW_S)

    def observe_finished(self, seq: Sequence) -> None:
        if seq.first_token_at is None:
            return
        self.ttft.observe(seq.first_token_at - seq.arrival)
        if seq.finished_at is not None and len(seq.output_ids) > 1:
            self.tpot.observe((seq.finished_at - seq.first_token_at) / (len(seq.output_ids) - 1))
