"""The assistant: prompt with numbered passages, citations, extractive/generative/auto modes,
no-RAG mode, ``chip ask`` and real SmolLM2 answers end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leanstack.chipexpert.assistant import (
    Answer,
    Assistant,
    Citation,
    cited_numbers,
    make_assistant,
)
from leanstack.chipexpert.cli import chip_app
from leanstack.chipexpert.generators import EndpointGenerator
from leanstack.chipexpert.grounding import split_sentences
from leanstack.chipexpert.retrieval import Retriever
from leanstack.errors import LeanstackError

from .test_generators import chat_server, completion

runner = CliRunner()
QUESTION = "How do I remove unused wires and cells from the design?"


class ScriptedGenerator:
    """A test double of the Generator protocol: answers ``reply`` and records the prompts."""

    name = "scripted"

    def __init__(self, reply: str = "Run opt_clean [2]; see also [3] and [9].",
                 small: bool = False) -> None:
        self.reply = reply
        self.small = small
        self.prompts: list[list[dict[str, str]]] = []

    def generate(self, messages: list[dict[str, str]], max_new_tokens: int = 256, *,
                 prose: bool = False) -> str:
        self.prompts.append(messages)
        return self.reply

    def score_choices(self, messages: list[dict[str, str]], choices: list[str]) -> list[float]:
        return [-float(len(c)) for c in choices]


@pytest.fixture(scope="module")
def retriever(small_kb: Path, embedding_model) -> Retriever:
    return Retriever.load(small_kb, model=embedding_model)


def test_scripted_double_answers_like_a_real_endpoint(retriever: Retriever) -> None:
    """The double stands in for a generator only if the assistant treats both alike: same
    reply in, same answer, citations and prompt out."""
    reply = "Run opt_clean [1]. It removes unused wires [7]."
    double = ScriptedGenerator(reply)
    with chat_server(completion(reply)) as srv:
        real = EndpointGenerator(srv.base_url)
        a = Assistant(real, retriever, k=2, mode="generative").ask(QUESTION)
    b = Assistant(double, retriever, k=2, mode="generative").ask(QUESTION)
    assert (a.answer, a.invalid_citations) == (b.answer, b.invalid_citations) == \
        ("Run opt_clean [1]. It removes unused wires.", [7])
    assert [(c.n, c.cited) for c in a.citations] == [(c.n, c.cited) for c in b.citations]
    assert srv.requests[0][1]["messages"] == double.prompts[0]


def test_ask_numbers_the_passages_and_marks_the_cited_ones(retriever: Retriever) -> None:
    gen = ScriptedGenerator()
    answer = Assistant(gen, retriever, k=3, mode="generative").ask(QUESTION)
    hits = retriever.search(QUESTION, k=3)
    assert [(c.n, c.source, c.section, c.text) for c in answer.citations] == \
        [(n, h.source, h.section, h.text) for n, h in enumerate(hits, 1)]
    assert [c.cited for c in answer.citations] == [False, True, True]
    # [9] names no passage: it is taken out of the answer and reported
    assert answer.answer == "Run opt_clean [2]; see also [3] and." and \
        answer.invalid_citations == [9]
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
    assert answer.answer == "opt_clean." and answer.invalid_citations == [1]
    prompt = gen.prompts[0][-1]["content"]
    assert QUESTION in prompt and "Documentation" not in prompt and "[1]" not in prompt


def test_answer_json_shape() -> None:
    c = Citation(1, "yosys-help", "opt_clean", "text", 0.5, cited=True)
    d = Answer("a [1]", [c], 1.23456, 0.2, 1.03456, "generative", [4]).to_dict()
    assert d == {"answer": "a [1]", "mode": "generative",
                 "citations": [{"n": 1, "source": "yosys-help", "section": "opt_clean",
                                "text": "text", "score": 0.5, "cited": True}],
                 "invalid_citations": [4],
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
    assert assistant.generator.small and assistant.resolve_mode() == "extractive"
    quoted = assistant.ask(QUESTION)
    assert quoted.mode == "extractive" and quoted.citations[0].cited
    assert quoted.citations[0].section.split(" -- ")[0] in {"opt_clean", "clean"}
    answer = assistant.ask(QUESTION, max_new_tokens=16, mode="generative")
    assert answer.mode == "generative" and answer.answer.strip()
    assert len(answer.citations) == 2
    assert cited_numbers(answer.answer) <= {1, 2}
    assert answer.generation_s > 0 and answer.latency_s >= answer.generation_s
    assert assistant.ask(QUESTION, max_new_tokens=16, mode="generative").answer == answer.answer


def test_real_smollm2_prose_stops_after_a_few_sentences(small_kb: Path) -> None:
    """Asked for prose, the local model stops at the sentence cap (or the word cap) well
    before a long token budget, instead of looping to it."""
    import torch

    from leanstack.chipexpert.generators import LocalGenerator
    from leanstack.chipexpert.grounding import MAX_ANSWER_SENTENCES, MAX_ANSWER_WORDS

    torch.set_num_threads(1)
    gen = LocalGenerator()
    messages = [{"role": "user", "content": "Write a long essay about digital circuits, "
                                            "with many sentences."}]
    text = gen.generate(messages, max_new_tokens=400, prose=True)
    assert len(split_sentences(text)) <= MAX_ANSWER_SENTENCES + 1  # + the one just started
    assert len(text.split()) <= MAX_ANSWER_WORDS + 8  # one step's tokens past the cap
    tokens = len(gen.loaded.tokenizer(text)["input_ids"])
    assert tokens < 200, tokens


def test_auto_mode_picks_extractive_for_a_small_model_only(retriever: Retriever) -> None:
    small, large = ScriptedGenerator(small=True), ScriptedGenerator()
    assert Assistant(small, retriever).resolve_mode() == "extractive"
    assert Assistant(large, retriever).resolve_mode() == "generative"
    assert Assistant(small, None).resolve_mode() == "generative"  # nothing to quote
    answer = Assistant(small, retriever, k=3).ask(QUESTION)
    assert answer.mode == "extractive" and small.prompts == []  # the model was not asked
    assert Assistant(small, retriever).ask(QUESTION, mode="generative").mode == "generative"


def test_extractive_answer_quotes_the_passages_with_valid_citations(retriever: Retriever) -> None:
    answer = Assistant(ScriptedGenerator(), retriever, k=3, mode="extractive").ask(QUESTION)
    shown = {c.n: c for c in answer.citations}
    assert answer.invalid_citations == [] and cited_numbers(answer.answer) <= set(shown)
    assert cited_numbers(answer.answer)
    # each part is quoted from the passage it cites (after an optional "command: ")
    parts = re.findall(r"(.+?)\s*\[(\d+)\]", answer.answer)
    assert parts and re.sub(r"(.+?)\s*\[(\d+)\]\s*", "", answer.answer) == ""
    for text, n in parts:
        passage = shown[int(n)]
        body = text.strip()
        body = body.split(": ", 1)[1] if re.match(r"[\w.$-]+: ", body) else body
        for sentence in split_sentences(body):
            flat = " ".join(sentence.split())
            assert flat in " ".join(passage.text.split()) or flat.rstrip(".") == \
                passage.section, (sentence, passage.section)
    assert re.search(r"\b(opt_clean|clean)\b", answer.answer), answer.answer
    assert "unused" in answer.answer


def test_generative_answer_is_cut_to_a_few_distinct_sentences(retriever: Retriever) -> None:
    loop = "Use opt_clean [1]. " * 30 + "It removes unused cells [2]. Then stat [3]. Extra [1]."
    answer = Assistant(ScriptedGenerator(loop), retriever, k=3, mode="generative").ask(QUESTION)
    assert answer.answer == "Use opt_clean [1]. It removes unused cells [2]. Then stat [3]."


def test_generated_loop_becomes_an_honest_note(retriever: Retriever) -> None:
    loop = "-top [4] " * 40
    answer = Assistant(ScriptedGenerator(loop), retriever, k=3, mode="generative").ask(QUESTION)
    assert answer.answer.startswith("The model gave no usable answer")
    assert cited_numbers(answer.answer) == set()


def test_bad_modes_are_one_line_errors(retriever: Retriever, tmp_path: Path) -> None:
    with pytest.raises(LeanstackError, match="unknown answer mode 'magic'"):
        Assistant(ScriptedGenerator(), retriever, mode="magic")
    with pytest.raises(LeanstackError, match="unknown answer mode"):
        Assistant(ScriptedGenerator(), retriever).ask(QUESTION, mode="magic")
    with pytest.raises(LeanstackError, match="extractive answers quote the knowledge base"):
        Assistant(ScriptedGenerator(), None, mode="extractive")
    with pytest.raises(LeanstackError, match="--mode extractive quotes"):
        make_assistant(endpoint="http://127.0.0.1:1", rag=False, mode="extractive")
    with pytest.raises(LeanstackError, match="unknown answer mode"):
        make_assistant(endpoint="http://127.0.0.1:1", directory=tmp_path, mode="x")


def test_cli_ask_extractive_does_not_call_the_model(small_kb: Path) -> None:
    with chat_server(completion("never used")) as srv:
        result = runner.invoke(chip_app, ["ask", QUESTION, "--endpoint", srv.base_url,
                                          "--mode", "extractive", "--json", "--dir",
                                          str(small_kb)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["mode"] == "extractive" and srv.requests == []
    assert cited_numbers(out["answer"]) and out["invalid_citations"] == []
    assert any(c["cited"] for c in out["citations"])
