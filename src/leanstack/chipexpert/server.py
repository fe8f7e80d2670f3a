"""HTTP API and web page of the assistant (FastAPI).

    POST /api/ask     {question, k?, rag?, max_new_tokens?} -> the Answer JSON
    GET  /api/search  ?q=...&k=3       -> [{n, source, section, text, score}]
    GET  /api/info                     -> {model, rag_available, k}
    GET  /                             -> the self-contained page (web/index.html, no CDN)
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from leanstack.chipexpert.assistant import Assistant
from leanstack.errors import LeanstackError

MAX_K = 20
MAX_TOKENS = 1024


class AskRequest(BaseModel):
    """The body of POST /api/ask."""

    question: str = Field(min_length=1, max_length=4000)
    k: int | None = Field(default=None, ge=1, le=MAX_K)
    rag: bool = True
    max_new_tokens: int = Field(default=256, ge=1, le=MAX_TOKENS)


def page_html() -> str:
    """The web page shipped in ``chipexpert/web``."""
    return (resources.files("leanstack.chipexpert") / "web" / "index.html").read_text("utf-8")


def create_app(assistant: Assistant) -> FastAPI:
    """The API around one assistant; ``rag``/``k`` per request reuse its generator and
    retriever."""
    app = FastAPI(title="ChipExpert", docs_url="/api/docs", redoc_url=None)
    html = page_html()

    @app.exception_handler(LeanstackError)
    async def user_error(_: Request, exc: LeanstackError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"detail": str(exc)})

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return html

    @app.get("/api/info")
    def info() -> dict:
        return {"model": assistant.generator.name, "rag_available": assistant.retriever is not None,
                "k": assistant.k}

    @app.post("/api/ask")
    def ask(req: AskRequest) -> dict:
        if req.rag and assistant.retriever is None:
            raise LeanstackError("this server has no knowledge base; ask with rag=false or "
                                 "restart it after 'leanstack chip corpus build'")
        one = Assistant(assistant.generator, assistant.retriever if req.rag else None,
                        req.k or assistant.k)
        return one.ask(req.question, max_new_tokens=req.max_new_tokens).to_dict()

    @app.get("/api/search")
    def search(q: str = Query(min_length=1), k: int = Query(3, ge=1, le=MAX_K)) -> list[dict]:
        if assistant.retriever is None:
            raise LeanstackError("this server has no knowledge base; run 'leanstack chip corpus "
                                 "build' and restart it")
        hits = assistant.retriever.search(q, k=k)
        return [{"n": n, "source": h.source, "section": h.section, "text": h.text,
                 "score": h.score} for n, h in enumerate(hits, 1)]

    return app
