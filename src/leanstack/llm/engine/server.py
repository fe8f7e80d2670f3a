"""An OpenAI-compatible HTTP server over the engine (FastAPI + uvicorn).

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions`` (both with ``stream: true`` as
server-sent events), ``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus). Bad
requests get HTTP 400 with an OpenAI-style ``{"error": {...}}`` body, overload gets 429. A client
that disconnects mid-request has its sequence aborted and its KV pages freed. Extensions to
OpenAI's request fields: ``top_k``, ``ignore_eos`` and ``kv_format`` (a per-request KV format or
LeanKV preset). The model may be named by its served name or ``default``.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from leanstack.errors import LeanstackError
from leanstack.llm.chat import chat_prompt
from leanstack.llm.engine.async_engine import AsyncEngine, Overloaded
from leanstack.llm.engine.engine import RequestOutput
from leanstack.llm.engine.sampling import SamplingParams

MAX_BODY_BYTES = 1 << 20
DISCONNECT_POLL_S = 0.5
CLIENT_GONE = 499  # nginx's code for a request the client abandoned; nobody reads it


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, code: str | None = None,
                 status: int = 400):
        super().__init__(message)
        self.param, self.code, self.status = param, code, status


def _error(message: str, status: int = 400, param: str | None = None,
           code: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status == 400 else "rate_limit_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param,
                                   "code": code}}, status_code=status)


def _number(body: dict[str, Any], key: str, default: Any, kind: type) -> Any:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise BadRequest(f"'{key}' must be a {'number' if kind is float else 'integer'}",
                         param=key)
    return kind(value)


def sampling_from(body: dict[str, Any]) -> SamplingParams:
    """SamplingParams from OpenAI request fields (temperature defaults to 1 as in OpenAI)."""
    key = "max_tokens" if body.get("max_tokens") is not None else "max_completion_tokens"
    stop = body.get("stop") or ()
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, list | tuple) or not all(isinstance(s, str) for s in stop):
        raise BadRequest("'stop' must be a string or a list of strings", param="stop")
    if body.get("n", 1) != 1:
        raise BadRequest("only n=1 is supported", param="n")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise BadRequest("'seed' must be an integer", param="seed")
    top_k = _number(body, "top_k", 0, int)
    try:
        return SamplingParams(
            max_tokens=_number(body, key, 16, int),
            temperature=_number(body, "temperature", 1.0, float),
            top_p=_number(body, "top_p", 1.0, float),
            top_k=max(top_k, 0),
            stop=tuple(stop), seed=seed, ignore_eos=bool(body.get("ignore_eos", False)))
    except LeanstackError as e:
        raise BadRequest(str(e), param="max_tokens" if "max_tokens" in str(e) else None) from e


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict)
                 and p.get("type") == "text"]
        if len(parts) == len(content):
            return "".join(parts)
    raise BadRequest("message content must be a string or a list of text parts",
                     param="messages")


def build_app(engine: AsyncEngine, model_name: str) -> FastAPI:
    """The FastAPI app serving ``engine`` as model ``model_name``."""
    app = FastAPI(title="leanstack LLM engine")
    created = int(time.time())
    names = {model_name, "default"}

    @app.exception_handler(BadRequest)
    async def bad_request(_: Request, e: BadRequest) -> JSONResponse:
        return _error(str(e), e.status, e.param, e.code)

    async def read_body(request: Request) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise BadRequest(f"request body too large: over {MAX_BODY_BYTES} bytes",
                             code="body_too_large")
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_BODY_BYTES:
                raise BadRequest(f"request body too large: over {MAX_BODY_BYTES} bytes",
                                 code="body_too_large")
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadRequest(f"request body is not valid JSON: {e}") from e
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        model = body.get("model")
        if model not in names:
            raise BadRequest(f"unknown model {model!r}: this server serves {model_name!r}",
                             param="model", code="model_not_found")
        kv = body.get("kv_format")
        if kv is not None and not isinstance(kv, str):
            raise BadRequest("'kv_format' must be a string", param="kv_format")
        return body

    async def start(body: dict[str, Any], prompt: str | list[int], prefix: str):
        params = sampling_from(body)
        try:
            return await engine.submit(prompt, params, body.get("kv_format"), prefix)
        except Overloaded as e:
            raise BadRequest(str(e), status=429, code="overloaded") from e
        except LeanstackError as e:
            raise BadRequest(str(e)) from e

    async def collect(request: Request, rid: str, sink: asyncio.Queue) -> bool:
        """Wait for the end of a request; abort it (and return False) if the client goes
        away."""
        try:
            checked = time.monotonic()
            while True:
                try:
                    out = await asyncio.wait_for(sink.get(), DISCONNECT_POLL_S)
                    if out.finished:
                        return True
                except TimeoutError:
                    pass
                if time.monotonic() - checked >= DISCONNECT_POLL_S:
                    checked = time.monotonic()
                    if await request.is_disconnected():
                        engine.abort(rid)
                        return False
        except asyncio.CancelledError:
            engine.abort(rid)
            raise

    def usage(seq: Any) -> dict[str, int]:
        return {"prompt_tokens": len(seq.prompt_ids), "completion_tokens": len(seq.output_ids),
                "total_tokens": seq.num_tokens}

    def stream(rid: str, sink: asyncio.Queue, chunk_of: Any) -> StreamingResponse:
        async def events():
            finished = False
            try:
                first = chunk_of(None)
                if first is not None:
                    yield f"data: {json.dumps(first)}\n\n"
                while not finished:
                    out = await sink.get()
                    finished = out.finished
                    if out.new_text or finished:
                        yield f"data: {json.dumps(chunk_of(out))}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                if not finished:  # the client went away (or the server is stopping)
                    engine.abort(rid)

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        body = await read_body(request)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        ok_ids = isinstance(prompt, list) and prompt and all(
            isinstance(t, int) and not isinstance(t, bool) for t in prompt)
        if not (isinstance(prompt, str) and prompt) and not ok_ids:
            raise BadRequest("'prompt' must be a non-empty string (or a list of token ids)",
                             param="prompt")
        rid, sink, seq = await start(body, prompt, "cmpl")

        def chunk_of(out: RequestOutput | None) -> dict[str, Any] | None:
            if out is None:
                return None
            return {"id": rid, "object": "text_completion", "created": int(time.time()),
                    "model": model_name, "choices": [{"index": 0, "text": out.new_text,
                                                      "logprobs": None,
                                                      "finish_reason": out.finish_reason}]}

        if body.get("stream"):
            return stream(rid, sink, chunk_of)
        if not await collect(request, rid, sink):
            return Response(status_code=CLIENT_GONE)
        return {"id": rid, "object": "text_completion", "created": int(time.time()),
                "model": model_name, "usage": usage(seq),
                "choices": [{"index": 0, "text": seq.text, "logprobs": None,
                             "finish_reason": seq.finish_reason}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        body = await read_body(request)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("'messages' must be a non-empty list", param="messages")
        plain = []
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise BadRequest("each message needs a 'role' and a 'content'",
                                 param="messages")
            plain.append({"role": m["role"], "content": _message_text(m.get("content"))})
        prompt = chat_prompt(engine.engine.tokenizer, plain)
        rid, sink, seq = await start(body, prompt, "chatcmpl")

        def chunk_of(out: RequestOutput | None) -> dict[str, Any]:
            delta = {"role": "assistant", "content": ""} if out is None else (
                {"content": out.new_text} if out.new_text else {})
            return {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()),
                    "model": model_name, "choices": [{
                        "index": 0, "delta": delta,
                        "finish_reason": None if out is None else out.finish_reason}]}

        if body.get("stream"):
            return stream(rid, sink, chunk_of)
        if not await collect(request, rid, sink):
            return Response(status_code=CLIENT_GONE)
        return {"id": rid, "object": "chat.completion", "created": int(time.time()),
                "model": model_name, "usage": usage(seq),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": seq.text},
                             "finish_reason": seq.finish_reason}]}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model",
                                            "created": created, "owned_by": "leanstack"}]}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name,
                "kv_format": engine.engine.config.kv_format, **engine.engine.stats()}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(engine.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)

    return app


def serve(loaded: Any, model_name: str, config: Any, host: str = "127.0.0.1",
          port: int = 8000, max_pending: int = 256) -> None:
    """Run the engine and the HTTP server until interrupted."""
    import uvicorn

    from leanstack.llm.engine.engine import Engine

    engine = AsyncEngine(Engine(loaded, config), max_pending=max_pending)
    engine.start()
    app = build_app(engine, model_name)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    try:
        server.run()
    finally:
        engine.stop()
