"""The web page in headless Chromium (Debian's, driven by playwright; nothing is downloaded):
the real server on a free port, a question typed, Ask clicked, the answer and a citation shown."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests._require import require
from tests._serve import served

from leanstack.chipexpert.assistant import Assistant
from leanstack.chipexpert.retrieval import Retriever
from leanstack.chipexpert.server import create_app

from .test_assistant import QUESTION, ScriptedGenerator

CHROMIUM = "/usr/bin/chromium"
REPLY = "Run opt_clean after synthesis [1]."


@pytest.fixture(scope="module")
def base_url(small_kb: Path, embedding_model) -> Iterator[str]:
    retriever = Retriever.load(small_kb, model=embedding_model)
    with served(create_app(Assistant(ScriptedGenerator(REPLY), retriever, k=3))) as url:
        yield url


@pytest.fixture(scope="module")
def page(base_url: str):
    require(not Path(CHROMIUM).exists() and not shutil.which("chromium") and ["chromium"],
            "run scripts/system-deps.sh")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            yield page
        finally:
            browser.close()


def test_ask_in_the_browser_shows_answer_and_citation(page, base_url: str) -> None:
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(base_url + "/")
    page.wait_for_function("document.getElementById('model').textContent.includes('scripted')")
    page.fill("#question", QUESTION)
    page.click("#ask")
    page.wait_for_selector("#answer a.cite")
    assert page.inner_text("#answer") == REPLY
    assert "answered in" in page.inner_text("#status")
    summaries = page.locator(".passage summary").all_inner_texts()
    assert len(summaries) == 3 and summaries[0].startswith("[1] ")
    assert "opt_clean" in summaries[0] or "clean" in summaries[0]
    # the passage text is folded until its [n] is clicked
    assert not page.locator("#passage-1 pre").is_visible()
    page.click("#answer a.cite[data-n='1']")
    assert page.locator("#passage-1 pre").is_visible()
    assert "highlight" in page.get_attribute("#passage-1", "class")
    assert all(u.startswith(base_url) for u in requests), requests  # no CDN, no other host
    assert base_url + "/api/ask/stream" in requests  # the answer is read as it settles


def _ask_with_reply(page, base_url: str, status: int, content_type: str, body: str) -> str:
    """Ask on the page while the stream endpoint answers with ``body``; the status line shown
    once the page reports an error (the Ask button is enabled again by then)."""
    page.route("**/api/ask/stream", lambda route: route.fulfill(
        status=status, content_type=content_type, body=body))
    try:
        page.goto(base_url + "/")
        page.fill("#question", "x")
        page.click("#ask")
        page.wait_for_selector("#status.error")
        assert page.is_enabled("#ask")
        return page.inner_text("#status")
    finally:
        page.unroute("**/api/ask/stream")


def test_error_from_the_api_is_shown(page, base_url: str) -> None:
    shown = _ask_with_reply(page, base_url, 400, "application/json",
                            '{"detail": "the question is empty; ask something"}')
    assert shown == "error: the question is empty; ask something"


def test_streamed_text_is_shown_and_an_error_in_the_stream_ends_it(page, base_url: str) -> None:
    # the server began answering, then the model endpoint failed: the text already shown stays
    # and the error is reported
    shown = _ask_with_reply(page, base_url, 200, "application/x-ndjson",
                            '{"text": "Run opt_clean"}\n'
                            '{"error": "model endpoint failed: timed out"}\n')
    assert shown == "error: model endpoint failed: timed out"
    assert page.inner_text("#answer") == "Run opt_clean"
