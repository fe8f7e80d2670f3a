"""Streamed answers: what is shown while the model writes is never taken back by the post-check
(``grounding.settled_answer``), the assistant's pieces add up to its answer, the server's NDJSON
stream, ``chip ask`` through it, and the real SmolLM2 streaming its reply."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tests._serve import served
from typer.testing import CliRunner

from leanstack.chipexpert.assistant import Assistant
from leanstack.chipexpert.cli import chip_app
from leanstack.chipexpert.generators import EndpointGenerator, UpstreamError
from leanstack.chipexpert.grounding import check_answer, settled_answer
from leanstack.chipexpert.retrieval import Retriever
from leanstack.chipexpert.server import create_app

from .test_assistant import QUESTION, ScriptedGenerator
from .test_generators import MESSAGES, chat_server, completion

runner = CliRunner()
SHOWN = {1, 2, 3}
WORDS = ["Use", "opt_clean", "the", "pass", "removes", "unused", "wires", "cells", "run", "It",
         "This", "-top", "[1]", "[2]", "[4]", "[12]", "[1].", "[4],", "wires.", "cells!",
         "done?", '"Quoted', "(see", "7", "stat.", "—"]


def random_reply(rng: random.Random) -> str:
    """Model-like text: words, citations valid and not, sentence ends, blank lines and loops."""
    words: list[str] = []
    while len(words) < rng.randint(1, 50):
        if rng.random() < 0.1:
            words += [rng.choice(WORDS) for _ in range(rng.randint(1, 3))] * rng.randint(2, 8)
        else:
            words.append(rng.choice(WORDS))
    return "".join(w + rng.choice([" ", " ", " ", "\n", "\n\n"]) for w in words)


def test_what_is_shown_is_always_the_start_of_the_checked_answer() -> None:
    for seed in range(300):
        reply = random_reply(random.Random(seed))
        final = check_answer(reply, SHOWN)[0]
        for end in range(len(reply) + 1):
            assert final.startswith(settled_answer(reply[:end], SHOWN)), (seed, reply[:end])


def test_unchecked_text_is_held_back() -> None:
    # a citation still being written, and one of a passage that was not shown
    assert settled_answer("Use opt_clean [1", SHOWN) == ""
    assert settled_answer("Use opt_clean to remove wires and cells [4] now", SHOWN) == \
        "Use opt_clean to remove"  # "wires and cells" could still start a loop
    assert "[4]" not in settled_answer("Use opt_clean to remove wires [4] and then stat the "
                                       "design and so on", SHOWN)
    # a second sentence waits until a third begins: it could repeat the first, or be unfinished
    first = "Use opt_clean to remove unused wires [1]."
    assert settled_answer(f"{first} Use opt_clean to remove unused wires", SHOWN) == first
    assert settled_answer(f"{first} It removes cells Then", SHOWN) == first
    assert check_answer(f"{first} It removes cells", SHOWN)[0] == first  # dropped at the end
    # a loop is cut where it starts, and nothing of it is shown first
    loop = "The top -top -top -top -top -top -top -top -top -top -top -top -top -top"
    assert check_answer(loop, SHOWN)[0] == "The top"
    assert all(not settled_answer(loop[:i], SHOWN).endswith("-top") for i in range(len(loop)))


class StreamingScript(ScriptedGenerator):
    """A streaming generator double: hands its reply on in token-sized pieces, recording when
    each piece was produced and when the assistant passed text on."""

    streams = True

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.events: list[str] = []

    def generate(self, messages, max_new_tokens=256, *, prose=False,
                 on_text: Callable[[str], None] | None = None) -> str:
        self.prompts.append(messages)
        pieces = [self.reply[i:i + 3] for i in range(0, len(self.reply), 3)]
        for piece in pieces:
            self.events.append("token")
            if on_text:
                on_text(piece)
        return self.reply


REPLY = ("Run opt_clean on the design to remove unused wires [1]. It also removes cells that "
         "drive nothing [9]. Run opt_clean on the design to remove unused wires [2]. Then")


@pytest.fixture(scope="module")
def retriever(small_kb: Path, embedding_model) -> Retriever:
    return Retriever.load(small_kb, model=embedding_model)


def test_the_assistant_streams_the_checked_answer_before_the_model_finishes(
        retriever: Retriever) -> None:
    gen = StreamingScript(REPLY)
    pieces: list[str] = []

    def show(piece: str) -> None:
        pieces.append(piece)
        gen.events.append("shown")

    answer = Assistant(gen, retriever, k=3, mode="generative").ask(QUESTION, on_text=show)
    assert "".join(pieces) == answer.answer == ("Run opt_clean on the design to remove unused "
                                                "wires [1]. It also removes cells that drive "
                                                "nothing.")
    assert answer.invalid_citations == [9] and not any("[9" in p for p in pieces)
    before_shown = gen.events[:gen.events.index("shown")].count("token")
    assert before_shown < gen.events.count("token") / 3  # early, not at the end
    assert len(pieces) > 3
    # the same answer without streaming, and a generator that cannot stream: one piece
    again = Assistant(StreamingScript(REPLY), retriever, k=3, mode="generative")
    assert again.ask(QUESTION).answer == answer.answer
    once: list[str] = []
    plain = Assistant(ScriptedGenerator(REPLY), retriever, k=3, mode="generative").ask(
        QUESTION, on_text=once.append)
    assert once == [plain.answer] == [answer.answer]


def test_empty_generated_answer_streams_the_no_answer_note() -> None:
    pieces: list[str] = []
    answer = Assistant(StreamingScript("[7] [8]"), None, mode="generative").ask(
        QUESTION, on_text=pieces.append)
    assert pieces == [answer.answer] and answer.answer.startswith("The model gave no usable")


def ndjson(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def stream_app(retriever: Retriever):
    return create_app(Assistant(StreamingScript(REPLY), retriever, k=3, mode="generative"))


def test_server_streams_pieces_then_the_answer_json(stream_app) -> None:
    client = TestClient(stream_app)
    r = client.post("/api/ask/stream", json={"question": QUESTION, "k": 2})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    lines = ndjson(r.text)
    texts = [line["text"] for line in lines[:-1]]
    answer = lines[-1]["answer"]
    assert len(texts) > 1 and "".join(texts) == answer["answer"]
    assert [c["n"] for c in answer["citations"]] == [1, 2] and answer["invalid_citations"] == [9]
    # the plain endpoint answers the same
    plain = client.post("/api/ask", json={"question": QUESTION, "k": 2}).json()
    assert plain["answer"] == answer["answer"]
    # a failure after the stream started is its last line, not a broken connection
    failed = ndjson(client.post("/api/ask/stream", json={"question": "   "}).text)
    assert len(failed) == 1 and "question is empty" in failed[0]["error"]
    assert client.post("/api/ask/stream", json={"question": ""}).status_code == 422


class Held(StreamingScript):
    def __init__(self) -> None:
        super().__init__("Done.")
        self.release = threading.Event()
        self.started = threading.Event()

    def generate(self, messages, max_new_tokens=256, *, prose=False, on_text=None):
        self.started.set()
        self.release.wait(10)
        return super().generate(messages, max_new_tokens, prose=prose, on_text=on_text)


def test_a_full_queue_refuses_a_stream_with_429() -> None:
    gen = Held()
    client = TestClient(create_app(Assistant(gen, None), workers=1, queue=0))
    result: dict = {}
    first = threading.Thread(target=lambda: result.setdefault(
        "r", client.post("/api/ask/stream", json={"question": QUESTION, "rag": False})))
    first.start()
    assert gen.started.wait(10)
    refused = client.post("/api/ask/stream", json={"question": QUESTION, "rag": False})
    gen.release.set()
    first.join(10)
    assert refused.status_code == 429
    assert ndjson(result["r"].text)[-1]["answer"]["answer"] == "Done."
    # the worker was given back: the next stream is admitted
    ok = client.post("/api/ask/stream", json={"question": QUESTION, "rag": False})
    assert ok.status_code == 200 and ndjson(ok.text)[-1]["answer"]["answer"] == "Done."


def test_chip_ask_prints_the_stream_of_a_server(stream_app) -> None:
    with served(stream_app) as url:
        out = runner.invoke(chip_app, ["ask", QUESTION, "--server", url])
        js = runner.invoke(chip_app, ["ask", QUESTION, "--server", url, "--json"])
    assert out.exit_code == 0 and js.exit_code == 0, out.output + js.output
    answer = json.loads(js.stdout)["answer"]
    assert out.stdout.startswith(answer + "\n")
    assert "taken out: citations [9]" in out.stdout


def test_real_model_streams_its_reply_in_pieces() -> None:
    import torch

    from leanstack.chipexpert.generators import LocalGenerator

    torch.set_num_threads(1)
    gen = LocalGenerator()
    msgs = [{"role": "user", "content": "Name three hardware description languages."}]
    pieces: list[tuple[float, str]] = []
    t0 = time.perf_counter()
    reply = gen.generate(msgs, max_new_tokens=24,
                         on_text=lambda p: pieces.append((time.perf_counter() - t0, p)))
    assert reply == gen.generate(msgs, max_new_tokens=24)  # streaming changes nothing
    assert "".join(p for _, p in pieces).strip() == reply and len(pieces) > 2
    assert pieces[0][0] < pieces[-1][0]  # the first piece came before the end


def sse(*events: object) -> bytes:
    """A server-sent event stream of chat-completion chunks (and a final [DONE])."""
    return b"".join(b"data: " + (e if isinstance(e, bytes) else json.dumps(e).encode()) + b"\n\n"
                    for e in [*events, b"[DONE]"])


def chunk(content: str) -> dict:
    return {"object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": content}}]}


def test_an_endpoint_streams_server_sent_events() -> None:
    pieces: list[str] = []
    reply = sse({"choices": [{"index": 0, "delta": {"role": "assistant"}}]},
                *(chunk(p) for p in ["Run opt", "_clean [1", "]. It removes", " wires."]),
                {"choices": []})  # a usage-only chunk carries no choice
    with chat_server(reply) as srv:
        text = EndpointGenerator(srv.base_url).generate(MESSAGES, 32, on_text=pieces.append)
    assert pieces == ["Run opt", "_clean [1", "]. It removes", " wires."]
    assert text == "Run opt_clean [1]. It removes wires."
    assert srv.requests[0][1]["stream"] is True and srv.requests[0][1]["temperature"] == 0
    # a server that ignores "stream" answers one JSON object: one piece
    with chat_server(completion("All at once.")) as srv:
        once: list[str] = []
        assert EndpointGenerator(srv.base_url).generate(MESSAGES, on_text=once.append) == \
            "All at once." and once == ["All at once."]
    # through the assistant: the checked answer, streamed
    with chat_server(sse(*(chunk(p) for p in REPLY.split(" ")[:1] +
                           [" " + w for w in REPLY.split(" ")[1:]]))) as srv:
        shown: list[str] = []
        answer = Assistant(EndpointGenerator(srv.base_url), None, mode="generative").ask(
            QUESTION, on_text=shown.append)
    assert "".join(shown) == answer.answer and len(shown) > 1


@pytest.mark.parametrize("reply", [sse(b"{not json"), sse({"no": "choices"})])
def test_a_broken_event_stream_is_a_one_line_error(reply: bytes) -> None:
    with chat_server(reply) as srv, pytest.raises(UpstreamError, match="OpenAI-compatible"):
        EndpointGenerator(srv.base_url).generate(MESSAGES, on_text=lambda _: None)
