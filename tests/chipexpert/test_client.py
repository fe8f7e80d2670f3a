"""``chip search`` / ``chip ask`` through a running ``chip serve`` (real uvicorn on a free port),
the fall-back to working in the process, and the one-shot ``chip ask`` that needs no torch."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests._serve import served
from typer.testing import CliRunner

from leanstack.chipexpert import client
from leanstack.chipexpert.assistant import Assistant
from leanstack.chipexpert.cli import chip_app
from leanstack.chipexpert.retrieval import Retriever
from leanstack.chipexpert.server import create_app
from leanstack.errors import LeanstackError

from .test_assistant import QUESTION, ScriptedGenerator

runner = CliRunner()
REPLY = "Run opt_clean after synthesis [1]."


def closed_port() -> int:
    """A port where nothing listens (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_url(small_kb: Path) -> Iterator[str]:
    with served(create_app(Assistant(ScriptedGenerator(REPLY), Retriever.load(small_kb), k=3,
                                     mode="generative"))) as url:
        yield url


def test_search_and_ask_use_the_given_server(server_url: str, small_kb: Path) -> None:
    result = runner.invoke(chip_app, ["search", "remove unused wires", "--k", "2", "--json",
                                      "--server", server_url])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    local = Retriever.load(small_kb).search("remove unused wires", k=2)
    assert [h["section"] for h in hits] == [h.section for h in local]
    assert f"searched by the ChipExpert server at {server_url}" in result.stderr
    answer = runner.invoke(chip_app, ["ask", QUESTION, "--json", "--server", server_url])
    assert answer.exit_code == 0, answer.output
    body = json.loads(answer.stdout)
    assert body["answer"] == REPLY and body["mode"] == "generative"
    assert body["citations"][0]["cited"] is True


def test_auto_finds_a_server_at_the_default_address(server_url: str, monkeypatch) -> None:
    monkeypatch.setattr(client, "DEFAULT_SERVER", server_url)
    assert client.find_server("auto") == server_url
    monkeypatch.setattr(client, "DEFAULT_SERVER", f"http://127.0.0.1:{closed_port()}")
    assert client.find_server("auto") is None  # nothing there: work in the process
    assert client.find_server("off") is None


def test_server_setting_comes_from_option_then_environment(monkeypatch) -> None:
    monkeypatch.setenv(client.ENV, "off")
    assert client.server_setting(None) == "off"
    assert client.server_setting("http://h:1") == "http://h:1"
    monkeypatch.delenv(client.ENV)
    assert client.server_setting(None) == "auto"


def test_a_named_server_that_is_down_or_foreign_is_a_one_line_error() -> None:
    down = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(LeanstackError, match="cannot reach the ChipExpert server") as err:
        client.find_server(down)
    assert "\n" not in str(err.value) and "--server off" in str(err.value)
    with pytest.raises(LeanstackError, match="is not a URL"):
        client.find_server("localhost:8000")

    class Other(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 -- the stdlib's name
            body = b'{"status": "ok"}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Other)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        with pytest.raises(LeanstackError, match="is not a ChipExpert server"):
            client.find_server(f"http://127.0.0.1:{other.server_port}")
    finally:
        other.shutdown()
        other.server_close()


def test_options_a_server_cannot_honour_are_refused(server_url: str, small_kb: Path) -> None:
    result = runner.invoke(chip_app, ["search", "x", "--method", "bm25", "--server", server_url])
    assert result.exit_code != 0 and "--server off" in str(result.exception)
    result = runner.invoke(chip_app, ["ask", "x", "--dir", str(small_kb), "--server",
                                      server_url])
    assert result.exit_code != 0 and "--server off" in str(result.exception)


def test_one_shot_extractive_ask_loads_neither_torch_nor_the_model(small_kb: Path) -> None:
    code = ("import sys\nfrom leanstack.chipexpert.cli import chip_app\n"
            "from typer.testing import CliRunner\n"
            f"r = CliRunner().invoke(chip_app, ['ask', 'what does opt_clean remove', '--json', "
            f"'--server', 'off', '--dir', {str(small_kb)!r}])\n"
            "assert r.exit_code == 0, r.output\n"
            "import json; a = json.loads(r.stdout); assert a['mode'] == 'extractive', a\n"
            "assert a['citations'] and '[' in a['answer'], a\n"
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={**os.environ, client.ENV: "off"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["False", "False"]
