"""HTTP API and web page of the assistant (FastAPI).

    POST /api/ask     {question, k?, rag?, max_new_tokens?, mode?} -> the Answer JSON
    POST /api/ask/stream  (the same body)  -> NDJSON lines as the answer settles:
                      {"text": piece} ..., then {"answer": the Answer JSON} or {"error": msg}
    GET  /api/search  ?q=...&k=3       -> [{n, source, section, text, score}]
    GET  /api/info                     -> {model, rag_available, k, mode}
    GET  /                             -> the self-contained page (web/index.html, no CDN)

Limits: a request body over ``MAX_BODY_BYTES`` is refused with 413, a question or query over
``MAX_QUESTION_CHARS`` with 422; at most ``workers`` answers are computed at once and
``queue`` more wait, any further one gets 429 with Retry-After. A failing model endpoint is
502; other bad input 400.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from queue import SimpleQueue
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from leanstack.chipexpert.assistant import MODES, Assistant
from leanstack.chipexpert.generators import UpstreamError
from leanstack.errors import LeanstackError

MAX_K = 20
MAX_TOKENS = 1024
MAX_QUESTION_CHARS = 2000
MAX_BODY_BYTES = 16 * 1024
WORKERS = 1  # answers computed at once (one local model; a forward pass holds its lock)
QUEUE = 8  # answers that may wait for a worker before 429
RETRY_AFTER_S = 5


class AskRequest(BaseModel):
    """The body of POST /api/ask; ``mode`` None means the server's default."""

    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
    k: int | None = Field(default=None, ge=1, le=MAX_K)
    rag: bool = True
    max_new_tokens: int = Field(default=256, ge=1, le=MAX_TOKENS)
    mode: str | None = Field(default=None, pattern="^(" + "|".join(MODES) + ")$")


class Busy(Exception):
    """Every worker is busy and the queue is full."""


class AnswerGate:
    """Admit at most ``workers`` answers at a time with ``queue`` more waiting; beyond that,
    ``admit`` raises ``Busy`` at once instead of letting requests pile up."""

    def __init__(self, workers: int = WORKERS, queue: int = QUEUE) -> None:
        self._slots = threading.Semaphore(workers)
        self._lock = threading.Lock()
        self._limit = workers + queue
        self.admitted = 0

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Hold a worker for the ``with`` block, waiting in the queue if need be."""
        with self._lock:
            if self.admitted >= self._limit:
                raise Busy
            self.admitted += 1
        try:
            with self._slots:
                yield
        finally:
            with self._lock:
                self.admitted -= 1


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413 before any handler sees
    it (by Content-Length, or while it streams in: the body is read here, up to the limit, and
    handed on whole)."""

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]],
                       send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.limit:
            await self._refuse(send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                await self._refuse(send)
                return
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if sent:
                return await receive()  # after the body: wait for a disconnect
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, send: Callable[[dict], Awaitable[None]]) -> None:
        body = (b'{"detail":"request body over %d bytes; send a shorter question"}'
                % self.limit)
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def page_html() -> str:
    """The web page shipped in ``chipexpert/web``."""
    return (resources.files("leanstack.chipexpert") / "web" / "index.html").read_text("utf-8")


def create_app(assistant: Assistant, workers: int = WORKERS, queue: int = QUEUE,
               max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The API around one assistant; ``rag``/``k``/``mode`` per request reuse its generator
    and retriever. ``workers``, ``queue`` and ``max_body_bytes`` as in the module docstring."""
    app = FastAPI(title="ChipExpert", docs_url="/api/docs", redoc_url=None)
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    html = page_html()
    gate = AnswerGate(workers, queue)

    @app.exception_handler(UpstreamError)
    async def upstream_error(_: Request, exc: UpstreamError) -> JSONResponse:
        return JSONResponse(status_code=502, content={"detail": str(exc)})

    @app.exception_handler(LeanstackError)
    async def user_error(_: Request, exc: LeanstackError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"detail": str(exc)})

    @app.exception_handler(Busy)
    async def busy(_: Request, exc: Busy) -> JSONResponse:
        return JSONResponse(status_code=429, headers={"Retry-After": str(RETRY_AFTER_S)},
                            content={"detail": "the assistant is busy answering other "
                                     "questions; retry in a few seconds"})

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return html

    @app.get("/api/info")
    def info() -> dict:
        return {"model": assistant.generator.name, "rag_available": assistant.retriever is not None,
                "k": assistant.k, "mode": assistant.mode}

    def one_for(req: AskRequest) -> Assistant:
        if req.rag and assistant.retriever is None:
            raise LeanstackError("this server has no knowledge base; ask with rag=false or "
                                 "restart it after 'leanstack chip corpus build'")
        return Assistant(assistant.generator, assistant.retriever if req.rag else None,
                         req.k or assistant.k, req.mode or assistant.mode)

    @app.post("/api/ask")
    def ask(req: AskRequest) -> dict:
        one = one_for(req)
        with gate.admit():
            return one.ask(req.question, max_new_tokens=req.max_new_tokens).to_dict()

    @app.post("/api/ask/stream")
    def ask_stream(req: AskRequest) -> StreamingResponse:
        one = one_for(req)
        admitted = gate.admit()
        admitted.__enter__()  # a full queue is 429 here, before the stream starts
        lines: SimpleQueue[str | None] = SimpleQueue()

        def work() -> None:
            try:
                answer = one.ask(req.question, max_new_tokens=req.max_new_tokens,
                                 on_text=lambda piece: lines.put(json.dumps({"text": piece})))
                lines.put(json.dumps({"answer": answer.to_dict()}))
            except LeanstackError as e:  # the status is sent already: the error is a line
                lines.put(json.dumps({"error": str(e)}))
            finally:
                admitted.__exit__(None, None, None)
                lines.put(None)

        threading.Thread(target=work, daemon=True).start()

        def body() -> Iterator[str]:
            while (line := lines.get()) is not None:
                yield line + "\n"

        return StreamingResponse(body(), media_type="application/x-ndjson")

    @app.get("/api/search")
    def search(q: str = Query(min_length=1, max_length=MAX_QUESTION_CHARS),
               k: int = Query(3, ge=1, le=MAX_K)) -> list[dict]:
        if assistant.retriever is None:
            raise LeanstackError("this server has no knowledge base; run 'leanstack chip corpus "
                                 "build' and restart it")
        hits = assistant.retriever.search(q, k=k)
        return [{"n": n, "source": h.source, "section": h.section, "text": h.text,
                 "score": h.score} for n, h in enumerate(hits, 1)]

    return app
