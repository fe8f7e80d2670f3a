"""The assistant: prompt with numbered passages, citations, no-RAG mode, ``chip ask`` and one real
SmolLM2 answer end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leanstack.chipexpert.assistant import Assistant, Citation, cited_numbers, make_assistant
from leanstack.chipexpert.cli import chip_app
from leanstack.chipexpert.generators import Generator
from leanstack.chipexpert.retrieval import Retriever
from leanstack.errors import LeanstackError

from .test_generators import chat_server, completion

runner = CliRunner()
QUESTION = "How do I remove unused wires and cells from the design?"


class ScriptedGenerator:
    """A test double of the Generator protocol: answers ``reply`` and records the prompts."""

    name = "scripted"

    def __init__(self, reply: str = "Run opt_clean [2]; see also [3] and [9].") -> None:
        self.reply = reply
        self.prompts: list[list[dict[str, str]]] = []

    def generate(self, messages: list[dict[str, str]], max_new_tokens: int = 256) -> str:
        self.prompts.append(messages)
        return self.reply

    def score_choices(self, messages: list[dict[str, str]], choices: list[str]) -> list[float]:
        return [-float(len(c)) for c in choices]


@pytest.fixture(scope="module")
def retriever(small_kb: Path, embedding_model) -> Retriever:
    return Retriever.load(small_kb, model=embedding_model)


def test_scripted_double_fits_the_protocol() -> None:
    assert isinstance(ScriptedGenerator(), Generator)


def test_ask_numbers_the_passages_and_marks_the_cited_ones(retriever: Retriever) -> None:
    gen = ScriptedGenerator()
    answer = Assistant(gen, retriever, k=3).ask(QUESTION)
    hits = retriever.search(QUESTION, k=3)
    assert [(c.n, c.source, c.section, c.text) for c in answer.citations] == \
        [(n, h.source, h.section, h.text) for n, h in enumerate(hits, 1)]
    assert [c.cited for c in answer.citations] == [False, True, True]  # [9] names no passage
    assert answer.answer == gen.reply
    prompt = gen.prompts[0][-1]["content"]
    for c in answer.citations:
        assert f"[{c.n}] {c.text}" in prompt
        assert c.section not in prompt  # headers stay out: a small model copies them
    assert prompt.index("[1]") < prompt.index("[2]") < prompt.index("[3]") < prompt.index(QUESTION)
    assert "citing" in prompt.lower()
    assert answer.latency_s >= answer.generation_s >= 0
    assert answer.latency_s == pytest.approx(answer.retrieval_s + answer.generation_s, abs=1e-3)


def test_context_messages_is_what_ask_sends(retriever: Retriever) -> None:
    gen = ScriptedGenerator()
    assistant = Assistant(gen, retriever, k=2)
    messages, citations = assistant.context_messages(QUESTION)
    assistant.ask(QUESTION)
    assert gen.prompts == [messages]
    assert [c.n for c in citations] == [1, 2]


def test_without_retriever_there_are_no_passages_or_citations() -> None:
    gen = ScriptedGenerator("opt_clean [1].")
    answer = Assistant(gen, None).ask(QUESTION)
    assert answer.citations == [] and answer.retrieval_s < 0.01
    prompt = gen.prompts[0][-1]["content"]
    assert QUESTION in prompt and "Documentation" not in prompt and "[1]" not in prompt


def test_answer_json_shape() -> None:
    c = Citation(1, "yosys-help", "opt_clean", "text", 0.5, cited=True)
    from leanstack.chipexpert.assistant import Answer

    d = Answer("a [1]", [c], 1.23456, 0.2, 1.03456).to_dict()
    assert d == {"answer": "a [1]", "citations": [{"n": 1, "source": "yosys-help",
                                                   "section": "opt_clean", "text": "text",
                                                   "score": 0.5, "cited": True}],
                 "latency_s": 1.2346, "retrieval_s": 0.2, "generation_s": 1.0346}
    json.dumps(d)


def test_cited_numbers() -> None:
    assert cited_numbers("a [1], b [3][1] and [x] [12]") == {1, 3, 12}
    assert cited_numbers("no citations") == set()


def test_bad_input_is_a_one_line_error(retriever: Retriever, tmp_path: Path) -> None:
    with pytest.raises(LeanstackError, match="question is empty"):
        Assistant(ScriptedGenerator(), retriever).ask("   ")
    with pytest.raises(LeanstackError, match="k must be at least 1"):
        Assistant(ScriptedGenerator(), retriever, k=0)
    with pytest.raises(LeanstackError, match="run 'leanstack chip corpus build'"):
        make_assistant(endpoint="http://127.0.0.1:1", directory=tmp_path)


def test_cli_ask_json_through_an_endpoint(small_kb: Path) -> None:
    with chat_server(completion("Use opt_clean [1].")) as srv:
        result = runner.invoke(chip_app, ["ask", QUESTION, "--endpoint", srv.base_url,
                                          "--k", "2", "--json", "--dir", str(small_kb),
                                          "--max-new-tokens", "30"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["answer"] == "Use opt_clean [1]."
    assert [c["n"] for c in out["citations"]] == [1, 2]
    assert {"n", "source", "section", "text", "score"} <= set(out["citations"][0])
    assert out["citations"][0]["cited"] is True and out["latency_s"] > 0
    assert srv.requests[0][1]["max_tokens"] == 30
    assert "[1] " in srv.requests[0][1]["messages"][-1]["content"]


def test_cli_ask_text_output_and_errors(small_kb: Path, tmp_path: Path) -> None:
    with chat_server(completion("Use opt_clean [1].")) as srv:
        result = runner.invoke(chip_app, ["ask", QUESTION, "--endpoint", srv.base_url,
                                          "--dir", str(small_kb)])
        no_rag = runner.invoke(chip_app, ["ask", QUESTION, "--endpoint", srv.base_url,
                                          "--no-rag", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Use opt_clean [1].\n\n[1]* ")
    assert no_rag.exit_code == 0 and "[1]*" not in no_rag.stdout
    missing = runner.invoke(chip_app, ["ask", QUESTION, "--dir", str(tmp_path)])
    assert isinstance(missing.exception, LeanstackError)
    assert "leanstack chip corpus build" in str(missing.exception)
    down = runner.invoke(chip_app, ["ask", QUESTION, "--no-rag",
                                    "--endpoint", "http://127.0.0.1:1/v1"])
    assert isinstance(down.exception, LeanstackError)
    assert "cannot reach the model endpoint" in str(down.exception)


def test_real_smollm2_answers_with_citations(small_kb: Path, embedding_model) -> None:
    import torch

    torch.set_num_threads(1)
    assistant = make_assistant(directory=small_kb, k=2)
    assistant.retriever._model = embedding_model  # reuse the session's embedding model
    answer = assistant.ask(QUESTION, max_new_tokens=16)
    assert answer.answer.strip()
    assert len(answer.citations) == 2
    assert answer.citations[0].section.split(" -- ")[0] in {"opt_clean", "clean"}
    assert answer.generation_s > 0 and answer.latency_s >= answer.generation_s
    assert assistant.ask(QUESTION, max_new_tokens=16).answer == answer.answer
