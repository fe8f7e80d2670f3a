"""The HTTP API through FastAPI's TestClient, with a scripted generator and a real small index."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from leanstack.chipexpert.assistant import Assistant
from leanstack.chipexpert.generators import EndpointGenerator
from leanstack.chipexpert.retrieval import Retriever
from leanstack.chipexpert.server import MAX_BODY_BYTES, MAX_QUESTION_CHARS, create_app

from .test_assistant import QUESTION, ScriptedGenerator
from .test_generators import chat_server


@pytest.fixture(scope="module")
def client(small_kb: Path, embedding_model) -> TestClient:
    retriever = Retriever.load(small_kb, model=embedding_model)
    return TestClient(create_app(Assistant(ScriptedGenerator("opt_clean [1]."), retriever, k=3)))


def test_ask_returns_the_answer_json(client: TestClient) -> None:
    r = client.post("/api/ask", json={"question": QUESTION, "k": 2})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["answer"] == "opt_clean [1]."
    assert [c["n"] for c in data["citations"]] == [1, 2]
    assert data["citations"][0]["cited"] is True and data["citations"][1]["cited"] is False
    assert data["citations"][0]["section"].split(" -- ")[0] in {"opt_clean", "clean"}
    assert data["latency_s"] > 0


def test_ask_without_rag_and_with_the_default_k(client: TestClient) -> None:
    assert client.post("/api/ask", json={"question": QUESTION, "rag": False}).json()[
        "citations"] == []
    assert len(client.post("/api/ask", json={"question": QUESTION}).json()["citations"]) == 3


def test_search_matches_the_retriever(client: TestClient, small_kb: Path, embedding_model) -> None:
    r = client.get("/api/search", params={"q": "dfflibmap liberty", "k": 4})
    assert r.status_code == 200
    hits = r.json()
    expected = Retriever.load(small_kb, model=embedding_model).search("dfflibmap liberty", k=4)
    assert [(h["n"], h["section"]) for h in hits] == [(n, e.section)
                                                      for n, e in enumerate(expected, 1)]


def test_bad_requests_are_rejected(client: TestClient) -> None:
    assert client.post("/api/ask", json={"question": ""}).status_code == 422
    assert client.post("/api/ask", json={"question": QUESTION, "k": 0}).status_code == 422
    assert client.post("/api/ask", json={"question": QUESTION, "k": 99}).status_code == 422
    assert client.post("/api/ask", json={}).status_code == 422
    r = client.post("/api/ask", json={"question": "   "})
    assert r.status_code == 400 and "question is empty" in r.json()["detail"]
    assert client.get("/api/search", params={"q": ""}).status_code == 422


def test_server_without_knowledge_base() -> None:
    client = TestClient(create_app(Assistant(ScriptedGenerator("no rag"), None)))
    assert client.get("/api/info").json()["rag_available"] is False
    r = client.post("/api/ask", json={"question": QUESTION})
    assert r.status_code == 400 and "rag=false" in r.json()["detail"]
    assert client.post("/api/ask", json={"question": QUESTION, "rag": False}).json()[
        "answer"] == "no rag"
    assert client.get("/api/search", params={"q": "x"}).status_code == 400


def test_page_is_self_contained(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert 'id="question"' in page and 'id="ask"' in page and "/api/ask" in page
    # nothing is loaded from another host (no CDN)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert client.get("/api/info").json() == {"model": "scripted", "rag_available": True, "k": 3,
                                              "mode": "auto"}


def test_body_and_question_sizes_are_capped(client: TestClient) -> None:
    big = client.post("/api/ask", content=b'{"question": "' + b"x" * MAX_BODY_BYTES + b'"}',
                      headers={"content-type": "application/json"})
    assert big.status_code == 413 and "request body over" in big.json()["detail"]
    long = client.post("/api/ask", json={"question": "x" * (MAX_QUESTION_CHARS + 1)})
    assert long.status_code == 422
    assert client.get("/api/search", params={"q": "x" * (MAX_QUESTION_CHARS + 1)}).status_code \
        == 422
    assert client.post("/api/ask", json={"question": "x" * 100}).status_code == 200


def test_streamed_body_over_the_cap_is_refused() -> None:
    app = create_app(Assistant(ScriptedGenerator(), None), max_body_bytes=64)
    client = TestClient(app)

    def chunks():
        yield b'{"question": "'
        yield b"y" * 100
        yield b'", "rag": false}'

    r = client.post("/api/ask", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_mode_per_request_and_server_default(client: TestClient) -> None:
    assert client.post("/api/ask", json={"question": QUESTION}).json()["mode"] == "generative"
    r = client.post("/api/ask", json={"question": QUESTION, "mode": "extractive"})
    assert r.status_code == 200 and r.json()["mode"] == "extractive"
    assert r.json()["answer"] != "opt_clean [1]."  # quoted, not the scripted model's reply
    assert client.post("/api/ask", json={"question": QUESTION, "mode": "x"}).status_code == 422


def test_server_default_mode_follows_the_generator(small_kb: Path, embedding_model) -> None:
    retriever = Retriever.load(small_kb, model=embedding_model)
    small = TestClient(create_app(Assistant(ScriptedGenerator(small=True), retriever)))
    assert small.post("/api/ask", json={"question": QUESTION}).json()["mode"] == "extractive"
    assert small.post("/api/ask", json={"question": QUESTION, "rag": False}).json()["mode"] == \
        "generative"


class BlockingGenerator(ScriptedGenerator):
    """Answers only when ``release`` is set; counts how many answers run at once."""

    def __init__(self) -> None:
        super().__init__("done")
        self.release = threading.Event()
        self.running = 0
        self.most = 0
        self._lock = threading.Lock()

    def generate(self, messages, max_new_tokens=256, *, prose=False):
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        self.release.wait(10)
        with self._lock:
            self.running -= 1
        return self.reply


def test_concurrent_answers_are_bounded_then_refused_with_429() -> None:
    gen = BlockingGenerator()
    client = TestClient(create_app(Assistant(gen, None), workers=1, queue=1))
    with ThreadPoolExecutor(4) as pool:
        first = [pool.submit(client.post, "/api/ask", json={"question": QUESTION, "rag": False})
                 for _ in range(2)]
        deadline = time.monotonic() + 5
        while gen.running == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # the second request is queued behind the first
        refused = client.post("/api/ask", json={"question": QUESTION, "rag": False})
        gen.release.set()
        statuses = [f.result().status_code for f in first]
    assert refused.status_code == 429 and refused.headers["retry-after"].isdigit()
    assert statuses == [200, 200] and gen.most == 1
    assert client.post("/api/ask", json={"question": QUESTION, "rag": False}).status_code == 200


def test_failing_model_endpoint_is_502() -> None:
    down = TestClient(create_app(Assistant(EndpointGenerator("http://127.0.0.1:1/v1",
                                                             timeout_s=2), None)))
    r = down.post("/api/ask", json={"question": QUESTION, "rag": False})
    assert r.status_code == 502 and "cannot reach the model endpoint" in r.json()["detail"]
    with chat_server({"error": "boom"}, status=500) as srv:
        broken = TestClient(create_app(Assistant(EndpointGenerator(srv.base_url), None)))
        r = broken.post("/api/ask", json={"question": QUESTION, "rag": False})
    assert r.status_code == 502 and "HTTP 500" in r.json()["detail"]
    # the client's own mistakes stay 400
    assert down.post("/api/ask", json={"question": "  ", "rag": False}).status_code == 400
