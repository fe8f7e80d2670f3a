"""The benchmark runner, summaries, human scores, report and the ``chip bench`` commands, with a
scripted generator standing in for the model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leanstack.chipexpert.bench.checkers import OpenScorer
from leanstack.chipexpert.bench.items import Item, load_items
from leanstack.chipexpert.bench.report import markdown_table, save_chart
from leanstack.chipexpert.bench.runner import (
    NULL_QUESTION,
    BenchRunner,
    apply_human_scores,
    bench_record,
    read_human_scores,
    summarize,
)
from leanstack.chipexpert.cli import chip_app
from leanstack.errors import LeanstackError

ITEMS = load_items()
cli = CliRunner()


class ScriptedGenerator:
    """Answers each item with its reference (found by the question text in the prompt), or with
    ``wrong`` text; scores the key's choice highest unless ``loglik`` is False (as an
    endpoint)."""

    name = "scripted"

    def __init__(self, right: bool = True, loglik: bool = True) -> None:
        self.right, self.loglik = right, loglik
        self.prompts: list[list[dict[str, str]]] = []

    def item_for(self, messages: list[dict[str, str]]) -> Item:
        text = messages[-1]["content"]
        return next(it for it in ITEMS if it.question in text)

    def generate(self, messages: list[dict[str, str]], max_new_tokens: int = 256) -> str:
        self.prompts.append(messages)
        item = self.item_for(messages)
        if not self.right:
            return "I am not sure. Answer: 42 furlongs (A?)"
        return f"Answer: {item.answer}" if item.type == "mcq" else item.answer

    def score_choices(self, messages: list[dict[str, str]], choices: list[str]) -> list[float]:
        if not self.loglik:
            raise LeanstackError("score_choices is not supported by endpoints")
        if messages[-1]["content"] == NULL_QUESTION:  # pmi's content-free prompt: no preference
            return [-1.0 * len(c) for c in choices]
        self.prompts.append(messages)
        key = "ABCD".index(self.item_for(messages).answer)
        target = key if self.right else (key + 1) % 4
        return [-0.5 * len(c) if i == target else -1.0 * len(c) for i, c in enumerate(choices)]

    def count_tokens(self, text: str) -> int:
        return len(text)  # one token per character: per-token scoring acts as per-char


@dataclass
class Cite:
    source: str
    section: str


class FakeAssistant:
    def __init__(self, generator: ScriptedGenerator, rag: bool = False) -> None:
        self.generator, self.rag = generator, rag

    def context_messages(self, question: str):
        cites = [Cite("yosys-help", "opt_clean")] if self.rag else []
        context = ("Passages:\n[1] opt_clean -- remove unused cells and wires\n\n" if self.rag
                   else "")
        return [{"role": "system", "content": "You are ChipExpert."},
                {"role": "user", "content": f"{context}Question: {question}"}], cites


SAME = OpenScorer(embed=lambda texts: [[1.0, 0.0]] * len(texts))
ONE_PER_TYPE = [next(it for it in ITEMS if it.type == t and it.domain == d)
                for t, d in (("open", "eda"), ("mcq", "digital"), ("numeric", "analog"),
                             ("verilog", "soc"), ("spice", "power"))]


def test_reference_answers_score_one_and_prompts_carry_format() -> None:
    gen = ScriptedGenerator()
    results = BenchRunner(FakeAssistant(gen, rag=True), SAME).run(ONE_PER_TYPE)
    assert [r.score for r in results] == [1.0] * 5, [r.detail for r in results]
    assert all(r.passages == ["yosys-help — opt_clean"] for r in results)
    mcq_prompt = gen.prompts[1][-1]["content"]
    assert "A. " in mcq_prompt and "D. " in mcq_prompt and mcq_prompt.startswith("Passages:")
    assert "```verilog" in gen.prompts[3][-1]["content"]


def test_wrong_answers_score_zero_and_endpoint_mcq_falls_back_to_generation() -> None:
    runner = BenchRunner(FakeAssistant(ScriptedGenerator(right=False, loglik=False)),
                         OpenScorer(embed=lambda texts: [[1.0, 0.0], [0.0, 1.0]]))
    results = runner.run(ONE_PER_TYPE)
    assert [r.score for r in results] == [0.0] * 5
    assert runner.loglik is False
    assert results[1].response.startswith("I am not sure")


def test_mcq_choice_per_character_log_likelihood() -> None:
    item = Item("t-1", "eda", "foundational", "mcq", "Pick one.", "B", [], {},
                choices=["no", "a much longer but likelier answer", "maybe", "yes"])

    class LengthBiased(ScriptedGenerator):
        def item_for(self, messages):
            return item

        def score_choices(self, messages, choices):
            # the raw sums favour the short "A. no"; per character, B is the most likely
            return [-6.0, -10.0, -9.0, -7.5]

    runner = BenchRunner(FakeAssistant(LengthBiased()), SAME, mcq_scoring="per-char")
    result = runner.run_item(item)
    assert result.response == "B" and result.passed


def test_mcq_choice_per_token_log_likelihood_is_the_default() -> None:
    item = Item("t-1", "eda", "foundational", "mcq", "Pick one.", "C", [], {},
                choices=["no", "a much longer but likelier answer", "maybe", "yes"])
    tokens = {"A. no": 5, "B. a much longer but likelier answer": 4, "C. maybe": 9, "D. yes": 5}

    class FewTokens(ScriptedGenerator):
        def item_for(self, messages):
            return item

        def score_choices(self, messages, choices):
            return [-6.0, -10.0, -9.0, -7.5]  # per character B wins; per token C (-1.0)

        def count_tokens(self, text):
            return tokens[text]

    assert BenchRunner(FakeAssistant(FewTokens()), SAME).run_item(item).response == "C"
    by_char = BenchRunner(FakeAssistant(FewTokens()), SAME, mcq_scoring="per-char")
    assert by_char.run_item(item).response == "B"


class SurfaceBiased(ScriptedGenerator):
    """Likes "A" whatever the question; the question itself raises "B" the most."""

    def __init__(self, item: Item) -> None:
        super().__init__()
        self.item = item
        self.null_prompts: list[list[dict[str, str]]] = []

    def score_choices(self, messages, choices):
        if messages[-1]["content"] == NULL_QUESTION:
            self.null_prompts.append(messages)
            return [-1.0, -6.0, -5.0, -5.0]
        return [-2.0, -3.0, -5.0, -5.0]


@pytest.mark.parametrize(("scoring", "picked"), [("pmi", "B"), ("per-char", "A")])
def test_pmi_scoring_removes_a_surface_bias_the_question_does_not_cause(scoring: str,
                                                                         picked: str) -> None:
    item = Item("t-2", "eda", "foundational", "mcq", "Pick one.", "B", [], {},
                choices=["same", "size", "each", "time"])
    gen = SurfaceBiased(item)
    result = BenchRunner(FakeAssistant(gen), SAME, mcq_scoring=scoring).run_item(item)
    assert result.response == picked and result.passed == (picked == "B")
    if scoring == "pmi":  # calibrated against the same system turn and no question
        assert gen.null_prompts == [[{"role": "system", "content": "You are ChipExpert."},
                                     {"role": "user", "content": NULL_QUESTION}]]
    else:
        assert gen.null_prompts == []


def test_summary_groups_by_domain_level_and_type() -> None:
    rows = [{"domain": "eda", "level": "foundational", "type": "mcq", "score": 1.0},
            {"domain": "eda", "level": "foundational", "type": "open", "score": 0.5},
            {"domain": "cim", "level": "advanced", "type": "mcq", "score": 0.0}]
    s = summarize(rows)
    assert s["overall"] == {"mean": 0.5, "n": 3}
    assert s["by_domain_level"] == {"eda/foundational": {"mean": 0.75, "n": 2},
                                    "cim/advanced": {"mean": 0.0, "n": 1}}
    assert s["by_level"]["advanced"]["mean"] == 0.0
    assert s["by_type"]["mcq"] == {"mean": 0.5, "n": 2}


def record(right: bool, rag: bool) -> dict:
    results = BenchRunner(FakeAssistant(ScriptedGenerator(right=right), rag), SAME).run(
        ONE_PER_TYPE)
    return bench_record(results, "scripted", rag)


def test_human_scores_replace_open_scores(tmp_path: Path) -> None:
    rec = record(right=False, rag=False)
    open_id = ONE_PER_TYPE[0].id
    csv_path = tmp_path / "human.csv"
    csv_path.write_text(f"id,score\n{open_id},0.9\n")
    new = apply_human_scores(rec, read_human_scores(csv_path))
    assert new["summary"]["overall"]["mean"] == pytest.approx(0.9 / 5)
    assert next(r for r in new["items"] if r["id"] == open_id)["detail"] == "human score"
    csv_path.write_text(f"{ONE_PER_TYPE[1].id},1\n")
    with pytest.raises(LeanstackError, match="only replace open items"):
        apply_human_scores(rec, read_human_scores(csv_path))
    csv_path.write_text("x-1,1.5\n")
    with pytest.raises(LeanstackError, match="human.csv:1: score 1.5 is outside 0..1"):
        read_human_scores(csv_path)
    csv_path.write_text("nope,1\n")
    with pytest.raises(LeanstackError, match="unknown item"):
        apply_human_scores(rec, read_human_scores(csv_path))


def test_report_table_and_chart(tmp_path: Path) -> None:
    without, with_rag = record(right=False, rag=False), record(right=True, rag=True)
    table = markdown_table([without, with_rag])
    assert "| scripted (no RAG) | scripted (RAG) |" in table
    assert "| EDA | foundational | 1 | 0.500 | 1.000 |" in table
    png = save_chart([without, with_rag], tmp_path / "fig.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_and_bench_report_commands(tmp_path: Path, monkeypatch) -> None:
    import leanstack.chipexpert.assistant as assistant_module
    import leanstack.chipexpert.bench.runner as runner_module

    made = []

    def fake_make_assistant(model=None, endpoint=None, rag=True, k=3, directory=None):
        made.append((model, rag, k))
        return FakeAssistant(ScriptedGenerator(right=rag), rag)

    monkeypatch.setattr(assistant_module, "make_assistant", fake_make_assistant)
    monkeypatch.setattr(runner_module, "OpenScorer", lambda: SAME)
    outs = []
    for flag in ("--no-rag", "--rag"):
        out = tmp_path / f"{flag}.json"
        res = cli.invoke(chip_app, ["bench", flag, "--domains", "eda,digital", "--types", "mcq",
                                    "--types", "numeric", "--limit", "3", "--out", str(out)])
        assert res.exit_code == 0, res.output
        outs.append(out)
    data = json.loads(outs[1].read_text())
    assert data["rag"] is True and data["model"] == "scripted"
    assert data["summary"]["overall"] == {"mean": 1.0, "n": 6}
    assert {r["domain"] for r in data["items"]} == {"eda", "digital"}
    assert made == [(None, False, 3), (None, True, 3)]
    res = cli.invoke(chip_app, ["bench-report", str(outs[0]), str(outs[1]),
                                "--chart", str(tmp_path / "c.png")])
    assert res.exit_code == 0, res.output
    assert "scripted (no RAG)" in res.stdout and (tmp_path / "c.png").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["bench", "--domains", "quantum"], "unknown domain"),
    (["bench", "--types", "essay"], "unknown type"),
    (["bench", "--types", "mcq", "--mcq-scoring", "votes"], "unknown MCQ scoring"),
    (["bench", "--limit", "0"], "--limit must be at least 1"),
    (["bench-report", "missing.json"], "cannot read"),
])
def test_bad_options_are_one_line_errors(args: list[str], message: str) -> None:
    res = cli.invoke(chip_app, args)
    assert isinstance(res.exception, LeanstackError)
    assert message in str(res.exception) and "\n" not in str(res.exception)
