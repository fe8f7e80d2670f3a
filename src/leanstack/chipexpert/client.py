"""Use a running ``leanstack chip serve`` from the CLI, so ``chip search`` and ``chip ask`` reuse
its warm model and index instead of loading them in every call.

Which server: ``--server URL`` or ``$LEANSTACK_CHIP_SERVER``; ``auto`` (the default) tries
``http://127.0.0.1:8000`` (where ``chip serve`` listens by default) and falls back to working in
the process when nothing answers there; ``off`` never uses a server. A probe to a port where
nothing listens is refused at once, so ``auto`` costs a few milliseconds when no server runs.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from leanstack.errors import LeanstackError

DEFAULT_SERVER = "http://127.0.0.1:8000"
ENV = "LEANSTACK_CHIP_SERVER"
PROBE_TIMEOUT_S = 0.5
ANSWER_TIMEOUT_S = 600.0


def server_setting(option: str | None) -> str:
    """The ``--server`` value, else ``$LEANSTACK_CHIP_SERVER``, else ``auto``."""
    return (option or os.environ.get(ENV) or "auto").strip()


def find_server(setting: str) -> str | None:
    """The base URL of the ChipExpert server to use, or None to work in this process.
    ``auto``: the default address if a ChipExpert server answers there; ``off``: None; a URL:
    that server, which must answer (else a one-line error naming it and the fix)."""
    if setting.lower() in ("off", "none", "no"):
        return None
    explicit = setting.lower() != "auto"
    url = (setting if explicit else DEFAULT_SERVER).rstrip("/")
    if explicit and not url.startswith(("http://", "https://")):
        raise LeanstackError(f"--server {setting!r} is not a URL; use e.g. {DEFAULT_SERVER}, "
                             "'auto' or 'off'")
    try:
        info = _get(f"{url}/api/info", PROBE_TIMEOUT_S)
    except LeanstackError:
        if explicit:
            raise
        return None
    if not (isinstance(info, dict) and {"model", "rag_available"} <= set(info)):
        if explicit:
            raise LeanstackError(f"{url} is not a ChipExpert server (its /api/info is not "
                                 "ChipExpert's); start one with 'leanstack chip serve'")
        return None
    return url


def _get(url: str, timeout: float) -> Any:
    return _request(urllib.request.Request(url), timeout)


def _request(req: urllib.request.Request, timeout: float,
             on_line: Callable[[Any], None] | None = None) -> Any:
    """The JSON answer of ``req``; with ``on_line``, an NDJSON stream: each line's JSON is
    passed to it and the last one returned."""
    base = req.full_url.split("/api/")[0]
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 -- user's URL
            if on_line is None:
                return json.loads(resp.read())
            last = None
            for line in resp:
                if line.strip():
                    last = json.loads(line)
                    on_line(last)
            return last
    except urllib.error.HTTPError as e:
        try:
            detail = json.loads(e.read()).get("detail", "")
        except (ValueError, AttributeError):
            detail = ""
        raise LeanstackError(f"the ChipExpert server at {base} answered HTTP {e.code}"
                             f"{': ' + str(detail) if detail else ''}") from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise LeanstackError(f"cannot reach the ChipExpert server at {base} ({reason}); start "
                             "it with 'leanstack chip serve' or pass --server off") from e
    except ValueError as e:
        raise LeanstackError(f"the server at {base} did not answer JSON; is it 'leanstack "
                             "chip serve'?") from e


def remote_search(url: str, query: str, k: int) -> list[dict[str, Any]]:
    """``GET /api/search``: a list of {n, source, section, text, score}."""
    qs = urllib.parse.urlencode({"q": query, "k": k})
    return _get(f"{url}/api/search?{qs}", ANSWER_TIMEOUT_S)


def remote_ask(url: str, question: str, k: int, rag: bool, max_new_tokens: int,
               mode: str) -> dict[str, Any]:
    """``POST /api/ask``: the answer as ``Answer.to_dict`` writes it."""
    body = json.dumps({"question": question, "k": k, "rag": rag,
                       "max_new_tokens": max_new_tokens, "mode": mode}).encode()
    req = urllib.request.Request(f"{url}/api/ask", data=body,
                                 headers={"Content-Type": "application/json"})
    return _request(req, ANSWER_TIMEOUT_S)


def remote_ask_stream(url: str, question: str, k: int, rag: bool, max_new_tokens: int,
                      mode: str, on_text: Callable[[str], None]) -> dict[str, Any]:
    """``POST /api/ask/stream``: ``on_text`` gets each settled piece of the answer as it comes;
    returns the answer as ``Answer.to_dict`` writes it."""
    body = json.dumps({"question": question, "k": k, "rag": rag,
                       "max_new_tokens": max_new_tokens, "mode": mode}).encode()
    req = urllib.request.Request(f"{url}/api/ask/stream", data=body,
                                 headers={"Content-Type": "application/json"})

    def line(record: Any) -> None:
        if isinstance(record, dict) and isinstance(record.get("text"), str):
            on_text(record["text"])

    last = _request(req, ANSWER_TIMEOUT_S, line)
    if isinstance(last, dict) and "error" in last:
        raise LeanstackError(f"the ChipExpert server at {url} failed: {last['error']}")
    if not (isinstance(last, dict) and isinstance(last.get("answer"), dict)):
        raise LeanstackError(f"the ChipExpert server at {url} ended the answer stream without "
                             "an answer; see the server's log")
    return last["answer"]
