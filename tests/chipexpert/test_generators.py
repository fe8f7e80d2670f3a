"""Generators: the OpenAI-compatible endpoint client against a real local HTTP server (standing in
for a remote model server such as vLLM or llama.cpp), and the real SmolLM2 in process."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from leanstack.chipexpert.generators import (
    EndpointGenerator,
    Generator,
    LocalGenerator,
    chat_completions_url,
    make_generator,
)
from leanstack.errors import LeanstackError

MESSAGES = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What does opt_clean do?"}]


class ChatServer(ThreadingHTTPServer):
    """A tiny /v1/chat/completions server: records each request body and answers ``reply``
    (a dict sent as JSON, or raw bytes sent as they are) with HTTP ``status``."""

    def __init__(self, reply: dict | bytes, status: int = 200) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.reply = reply
        self.status = status
        self.requests: list[tuple[str, dict]] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: ChatServer

    def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, body))
        if self.path != "/v1/chat/completions":
            self.send_error(404, "no such route")
            return
        reply = self.server.reply
        data = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def completion(content: str) -> dict:
    """An OpenAI-style chat completion response carrying ``content``."""
    return {"id": "x", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}]}


@contextmanager
def chat_server(reply: dict | bytes, status: int = 200) -> Iterator[ChatServer]:
    """Run a ``ChatServer`` in a thread for the duration of the block."""
    server = ChatServer(reply, status)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_endpoint_sends_messages_greedily_and_returns_the_content() -> None:
    with chat_server(completion("  opt_clean removes unused cells and wires [1].\n")) as srv:
        gen = make_generator(model="chipexpert-8b", endpoint=srv.base_url + "/v1")
        assert isinstance(gen, Generator)
        assert gen.generate(MESSAGES, max_new_tokens=40) == \
            "opt_clean removes unused cells and wires [1]."
    path, body = srv.requests[0]
    assert path == "/v1/chat/completions"
    assert body == {"model": "chipexpert-8b", "messages": MESSAGES, "max_tokens": 40,
                    "temperature": 0}


@pytest.mark.parametrize("given", ["http://h:1", "http://h:1/", "http://h:1/v1",
                                   "http://h:1/v1/chat/completions"])
def test_endpoint_url_forms(given: str) -> None:
    assert chat_completions_url(given) == "http://h:1/v1/chat/completions"


def test_endpoint_failures_are_one_line_errors() -> None:
    with pytest.raises(LeanstackError, match="not an http"):
        EndpointGenerator("localhost:8000")
    with chat_server(completion("x")) as srv:
        port = srv.server_address[1]
    with pytest.raises(LeanstackError, match="cannot reach the model endpoint") as e:
        EndpointGenerator(f"http://127.0.0.1:{port}", timeout_s=5).generate(MESSAGES)
    assert "\n" not in str(e.value)
    with chat_server({"error": "model not loaded"}, status=503) as srv, \
            pytest.raises(LeanstackError, match="HTTP 503.*model not loaded"):
        EndpointGenerator(srv.base_url).generate(MESSAGES)
    with chat_server(b"<html>hello</html>") as srv, \
            pytest.raises(LeanstackError, match="did not answer JSON"):
        EndpointGenerator(srv.base_url).generate(MESSAGES)
    with chat_server({"choices": []}) as srv, \
            pytest.raises(LeanstackError, match=r"without choices\[0\]"):
        EndpointGenerator(srv.base_url).generate(MESSAGES)
    with pytest.raises(LeanstackError, match="not supported by endpoints"):
        EndpointGenerator("http://127.0.0.1:1").score_choices(MESSAGES, ["A", "B"])


@pytest.fixture(scope="module")
def smol() -> LocalGenerator:
    import torch

    torch.set_num_threads(1)
    return LocalGenerator()


def test_local_model_is_greedy_and_deterministic(smol: LocalGenerator) -> None:
    msgs = [{"role": "user", "content": "Name a hardware description language."}]
    first = smol.generate(msgs, max_new_tokens=12)
    assert first and first == smol.generate(msgs, max_new_tokens=12)
    with pytest.raises(LeanstackError, match="max_new_tokens"):
        smol.generate(msgs, max_new_tokens=0)


def test_score_choices_prefers_the_models_own_continuation(smol: LocalGenerator) -> None:
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    own = smol.generate(msgs, max_new_tokens=6)
    scores = smol.score_choices(msgs, [own, "zebra quantum pickle"])
    assert len(scores) == 2 and all(s < 0 for s in scores)
    assert scores[0] > scores[1]
    # each choice is scored on its own: the batch gives the same numbers as one at a time
    assert smol.score_choices(msgs, [own])[0] == pytest.approx(scores[0], abs=1e-3)
    # the prompt's cache is shared: order must not matter (each choice is cropped away)
    assert smol.score_choices(msgs, ["zebra quantum pickle", own]) == \
        pytest.approx(scores[::-1], abs=1e-3)
    with pytest.raises(LeanstackError, match="empty"):
        smol.score_choices(msgs, ["A", ""])


def test_score_choices_equals_a_full_forward_pass(smol: LocalGenerator) -> None:
    import torch

    msgs = [{"role": "user", "content": "Name a hardware description language."}]
    choice = "Verilog is one."
    prompt = smol.prompt_ids(msgs)
    cont = smol.loaded.tokenizer(choice, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = smol.loaded.model(input_ids=torch.tensor([prompt + cont])).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    pos = torch.arange(len(prompt), len(prompt) + len(cont))
    want = float(logp[pos - 1, torch.tensor(cont)].sum())
    assert smol.score_choices(msgs, [choice])[0] == pytest.approx(want, abs=1e-3)


def test_missing_local_model_is_a_one_line_error(tmp_path) -> None:
    with pytest.raises(LeanstackError, match="not found"):
        make_generator(model=str(tmp_path / "nope"))
