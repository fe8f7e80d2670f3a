"""The HTTP API through FastAPI's TestClient, with a scripted generator and a real small index."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from leanstack.chipexpert.assistant import Assistant
from leanstack.chipexpert.retrieval import Retriever
from leanstack.chipexpert.server import create_app

from .test_assistant import QUESTION, ScriptedGenerator


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
    assert client.get("/api/info").json() == {"model": "scripted", "rag_available": True, "k": 3}
