"""Instruction-tuning records: command/option -> what it does, section -> question/answer,
snippet -> explanation, spec -> Verilog that passed its testbench, and grounded answers
(numbered passages + question -> a short answer citing them as [n]).

Every prompt is the one the assistant itself sends: its system prompt, then either the question
with "Answer briefly." (no retrieval) or the numbered passages, the question and the citation
instruction (``assistant.messages_for``); Verilog specs carry the benchmark's reply format.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from leanstack.chipexpert.assistant import RAG_INSTRUCTION, SYSTEM_PROMPT, Citation, format_passages
from leanstack.chipexpert.bench.runner import INSTRUCTIONS
from leanstack.chipexpert.chunking import Chunk
from leanstack.chipexpert.training.qa_pairs import QAPair
from leanstack.chipexpert.training.schema import message
from leanstack.chipexpert.training.snippets import Snippet
from leanstack.chipexpert.training.verilog_specs import VerilogTask

K_PASSAGES = 3  # the assistant's default top-k
VERILOG_SOURCE = "leanstack verilog task families"


def closed_book_prompt(question: str) -> list[dict[str, str]]:
    """The assistant's prompt without retrieval."""
    return [message("system", SYSTEM_PROMPT), message("user", f"{question.strip()}\nAnswer "
                                                              "briefly.")]


def grounded_prompt(question: str, passages: Sequence[str]) -> list[dict[str, str]]:
    """The assistant's prompt with ``passages`` numbered [1]..[k]."""
    cites = [Citation(n, "", "", text, 0.0) for n, text in enumerate(passages, 1)]
    user = (f"Documentation:\n{format_passages(cites)}\n\nQuestion: {question.strip()}\n"
            f"{RAG_INSTRUCTION}")
    return [message("system", SYSTEM_PROMPT), message("user", user)]


def verilog_prompt(spec: str) -> list[dict[str, str]]:
    """A spec as the benchmark asks for Verilog (without retrieval)."""
    prompt = closed_book_prompt(spec)
    prompt[1]["content"] += "\n" + INSTRUCTIONS["verilog"]
    return prompt


def verilog_answer(code: str) -> str:
    """A module as a fenced Verilog block."""
    return f"```verilog\n{code.rstrip()}\n```"


@dataclass(frozen=True)
class Grounded:
    """A grounded prompt for a QA pair: the passages shown, the gold passage's number and the
    neighbour's number (0 when the neighbour is not among them)."""

    pair: QAPair
    passages: tuple[Chunk, ...]
    gold: int
    neighbour: int

    def prompt(self) -> list[dict[str, str]]:
        """The messages the assistant would send."""
        return grounded_prompt(self.pair.question, [c.text for c in self.passages])

    def answer(self) -> str:
        """The correct answer, citing the gold passage."""
        return f"{self.pair.answer} [{self.gold}]"


def ground(pair: QAPair, pool: Sequence[Chunk], rng: random.Random) -> Grounded:
    """``pair``'s chunk, its neighbour (a hard distractor, when there is one) and random
    chunks of other sections, shuffled into ``K_PASSAGES`` numbered passages."""
    chosen = [pair.chunk] + ([pair.neighbour] if pair.neighbour is not None else [])
    while len(chosen) < K_PASSAGES:
        c = pool[rng.randrange(len(pool))]
        if all(c.section != o.section or c.source != o.source for o in chosen):
            chosen.append(c)
    rng.shuffle(chosen)
    gold = chosen.index(pair.chunk) + 1
    nb = chosen.index(pair.neighbour) + 1 if pair.neighbour is not None else 0
    return Grounded(pair, tuple(chosen), gold, nb)


def sft_record(rid: str, kind: str, prompt: list[dict[str, str]], answer: str, source: str,
               licence: str) -> dict:
    """One ``sft.jsonl`` record."""
    return {"id": rid, "kind": kind, "messages": [*prompt, message("assistant", answer)],
            "source": source, "licence": licence}


def qa_records(pairs: Sequence[QAPair], grounded: Sequence[Grounded]) -> list[dict]:
    """Closed-book records (kind ``command``/``section``) and grounded records."""
    out = [sft_record(f"sft-{p.kind}-{p.chunk.id}-{n}", p.kind, closed_book_prompt(p.question),
                      p.answer, p.chunk.source, p.chunk.license) for n, p in enumerate(pairs)]
    out += [sft_record(f"sft-grounded-{g.pair.chunk.id}-{n}", "grounded", g.prompt(), g.answer(),
                       g.pair.chunk.source, g.pair.chunk.license)
            for n, g in enumerate(grounded)]
    return out


def snippet_records(snippets: Sequence[Snippet]) -> list[dict]:
    """Snippet -> explanation records."""
    asks = {"spice": "Explain this SPICE netlist, element by element:",
            "verilog": "What does this Verilog module describe?"}
    return [sft_record(f"sft-snippet-{s.id}", "snippet",
                       closed_book_prompt(f"{asks[s.language]}\n```{s.language}\n{s.code}\n```"),
                       s.explanation, s.source, s.licence) for s in snippets]


def verilog_records(tasks: Sequence[VerilogTask]) -> list[dict]:
    """Spec -> reference module records (only tasks whose reference passed its testbench)."""
    return [sft_record(f"sft-{t.id}", "verilog", verilog_prompt(t.spec),
                       verilog_answer(t.reference), VERILOG_SOURCE, "Apache-2.0")
            for t in tasks]
