"""Page accounting of the scheduler + KV manager under random arrivals, aborts and finishes.

Which pages a sequence owns depends only on token counts, never on the model's numbers, so this
property test drives the real Scheduler and KVManager with a stand-in for the model runner (each
step "samples" token 0). That lets hypothesis try hundreds of schedules in seconds; the real
model runs the same code paths in test_engine.py.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leanstack.errors import LeanstackError
from leanstack.llm.engine import KVManager, ModelShape, SamplingParams, Scheduler, Sequence
from leanstack.llm.engine.sequence import SequenceStatus

SHAPE = ModelShape(num_layers=2, num_kv_heads=1, head_dim=8)
FP16_TOKEN = 2 * 2 * 8 * 2  # layers x (K, V) x head_dim x 2 bytes
PAGE = 4 * FP16_TOKEN  # four fp16 tokens per page


def _check(sched: Scheduler, kv: KVManager, live: list[Sequence]) -> None:
    owned = [p for s in live for p in s.pages]
    assert len(owned) == len(set(owned)), "a page is owned twice"
    assert len(owned) + kv.num_free == kv.num_pages, "pages leaked"
    for s in live:
        if s.status is SequenceStatus.WAITING:
            assert not s.pages and s.num_computed == 0
        if s.status is SequenceStatus.RUNNING:
            assert len(s.pages) * kv.tokens_per_page(s.kv_format) >= s.num_computed


def _step(sched: Scheduler) -> None:
    """What Engine.step does around the model: advance computed counts, append, finish."""
    decoding = any(s.num_tokens - s.num_computed == 1 for s in sched.running)
    out = sched.schedule()
    assert out.num_tokens <= sched.max_batched_tokens
    if decoding and sched.max_prefill_tokens is not None:
        prompt = sum(c.num_tokens for c in out.chunks if c.num_tokens > 1)
        assert prompt <= sched.max_prefill_tokens
    for chunk in out.chunks:
        seq = chunk.seq
        assert chunk.start == seq.num_computed and chunk.num_tokens >= 1
        seq.num_computed += chunk.num_tokens
        if chunk.samples:
            seq.output_ids.append(0)
            if len(seq.output_ids) >= seq.params.max_tokens:
                sched.finish(seq, "length")


events = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(1, 30), st.integers(1, 12), st.sampled_from(
        ["fp16", "fp32"])),
    st.tuples(st.just("abort"), st.integers(0, 50)),
    st.tuples(st.just("step"), st.integers(1, 4)),
), max_size=60)


@settings(max_examples=150, deadline=None)
@given(events=events, pages=st.integers(8, 24), step_tokens=st.integers(1, 24),
       max_seqs=st.integers(1, 6), prefill_cap=st.one_of(st.none(), st.integers(1, 8)))
def test_pages_never_leak_and_every_request_finishes(events, pages, step_tokens, max_seqs,
                                                     prefill_cap):
    kv = KVManager(SHAPE, budget_bytes=pages * PAGE, page_bytes=PAGE)
    sched = Scheduler(kv, max_num_seqs=max_seqs, max_batched_tokens=step_tokens,
                      max_prefill_tokens=prefill_cap)
    live: list[Sequence] = []
    for event in events:
        if event[0] == "add":
            _, prompt, max_tokens, fmt = event
            seq = Sequence([1] * prompt, SamplingParams(max_tokens=max_tokens), fmt)
            if seq.max_total_tokens - 1 > kv.capacity_tokens(fmt):
                continue
            sched.add(seq)
            live.append(seq)
        elif event[0] == "abort" and live:
            seq = live[event[1] % len(live)]
            if not seq.is_finished:
                sched.finish(seq, "abort")
        else:
            for _ in range(event[1]):
                _step(sched)
        _check(sched, kv, [s for s in live if not s.is_finished])
    # liveness: with no new arrivals everything finishes (no starvation, no livelock)
    bound = sum(s.max_total_tokens for s in live) * 4 + 10
    for _ in range(bound):
        if not sched.has_work():
            break
        _step(sched)
        _check(sched, kv, [s for s in live if not s.is_finished])
    assert not sched.has_work()
    assert all(s.is_finished for s in live)
    assert kv.num_free == kv.num_pages


def test_youngest_is_preempted_and_requeued_first():
    kv = KVManager(SHAPE, budget_bytes=4 * PAGE, page_bytes=PAGE)
    sched = Scheduler(kv, max_num_seqs=4, max_batched_tokens=64)
    old = Sequence([1] * 8, SamplingParams(max_tokens=8), "fp16")
    young = Sequence([1] * 8, SamplingParams(max_tokens=8), "fp16")
    sched.add(old)
    sched.add(young)
    _step(sched)  # both admitted: 2 + 2 pages, pool full
    assert kv.num_free == 0 and sched.running == [old, young]
    _step(sched)  # old needs a 3rd page -> young is preempted
    assert young.status is SequenceStatus.WAITING and young.num_preemptions == 1
    assert not young.pages and list(sched.waiting) == [young]
    assert sched.num_preemptions == 1


def test_admission_waits_for_the_whole_prompt_to_fit():
    kv = KVManager(SHAPE, budget_bytes=4 * PAGE, page_bytes=PAGE)
    sched = Scheduler(kv, max_num_seqs=4, max_batched_tokens=4)
    first = Sequence([1] * 10, SamplingParams(max_tokens=2), "fp16")  # 3 pages
    second = Sequence([1] * 8, SamplingParams(max_tokens=2), "fp16")  # 2 pages: does not fit
    sched.add(first)
    sched.add(second)
    out = sched.schedule()
    assert [c.seq for c in out.chunks] == [first] and out.chunks[0].num_tokens == 4  # a chunk
    assert second.status is SequenceStatus.WAITING and not second.pages


def test_prefill_budget_applies_only_while_sequences_decode():
    kv = KVManager(SHAPE, budget_bytes=16 * PAGE, page_bytes=PAGE)
    sched = Scheduler(kv, max_num_seqs=4, max_batched_tokens=32, max_prefill_tokens=5)
    first = Sequence([1] * 12, SamplingParams(max_tokens=8), "fp16")
    sched.add(first)
    out = sched.schedule()  # nothing decodes yet: the whole prompt in one chunk
    assert [(c.seq, c.num_tokens) for c in out.chunks] == [(first, 12)]
    first.num_computed = 12
    first.output_ids.append(0)
    second = Sequence([1] * 12, SamplingParams(max_tokens=8), "fp16")
    third = Sequence([1] * 3, SamplingParams(max_tokens=8), "fp16")
    sched.add(second)
    sched.add(third)
    out = sched.schedule()  # first decodes: prompts share 5 tokens, the decode is not capped
    assert [(c.seq, c.num_tokens) for c in out.chunks] == [(first, 1), (second, 5)]
    assert third.status is SequenceStatus.WAITING  # the prefill budget is spent
    first.num_computed += 1
    first.output_ids.append(0)
    second.num_computed = 5
    out = sched.schedule()
    assert [(c.seq, c.num_tokens) for c in out.chunks] == [(first, 1), (second, 5)]


def test_prefill_budget_must_be_positive():
    kv = KVManager(SHAPE, budget_bytes=4 * PAGE, page_bytes=PAGE)
    with pytest.raises(LeanstackError, match="max_prefill_tokens"):
        Scheduler(kv, max_prefill_tokens=0)
