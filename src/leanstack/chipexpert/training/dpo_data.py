"""Preference pairs (TRL conversational format): the chosen answer is grounded and correct, the
rejected one a failure a small model really makes:

- ``loop``: the answer starts, then repeats a few words over and over (``grounding.loop_start``
  must detect it);
- ``wrong_fact``: a fact from the neighbouring section (the next command or section of the same
  document), attributed to the gold passage;
- ``invented_citation``: the right sentence citing a passage number the prompt does not show;
- ``failing_verilog``: a buggy variant of the module that was run and fails its testbench.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from leanstack.chipexpert.grounding import loop_start
from leanstack.chipexpert.training.qa_pairs import answer_sentences
from leanstack.chipexpert.training.schema import message
from leanstack.chipexpert.training.sft_data import (
    K_PASSAGES,
    VERILOG_SOURCE,
    Grounded,
    verilog_answer,
    verilog_prompt,
)
from leanstack.chipexpert.training.verilog_specs import VerilogTask


def dpo_record(rid: str, prompt: list[dict[str, str]], chosen: str, rejected: str,
               failure: str, source: str) -> dict:
    """One ``dpo.jsonl`` record."""
    return {"id": rid, "prompt": prompt, "chosen": [message("assistant", chosen)],
            "rejected": [message("assistant", rejected)], "failure": failure, "source": source}


def looping(answer: str, rng: random.Random) -> str | None:
    """``answer``'s opening words, then a two- or three-word fragment of it (with a citation
    when the answer has one) repeated; None when the answer is too short to loop on."""
    words = answer.split()
    if len(words) < 6:
        return None
    start = rng.randrange(1, min(5, len(words) - 3))
    size = rng.choice((2, 3))
    fragment = " ".join(words[start:start + size]).rstrip(".,;:")
    cite = next((w.rstrip(".") for w in words if w.startswith("[") and w[1:2].isdigit()), "")
    unit = f"{fragment} {cite}".strip()
    text = " ".join(words[:start + size]).rstrip(".,;:") + " " + " ".join([unit] * 8)
    return text if loop_start(text) is not None else None


def grounded_pairs(items: Sequence[Grounded], rng: random.Random) -> list[dict]:
    """``loop``, ``wrong_fact`` and ``invented_citation`` pairs in turn over grounded prompts."""
    out = []
    for n, g in enumerate(items):
        chosen, src = g.answer(), g.pair.chunk.source
        failure = ("loop", "wrong_fact", "invented_citation")[n % 3]
        rejected = None
        if failure == "loop":
            rejected = looping(chosen, rng)
        elif failure == "wrong_fact" and g.pair.neighbour is not None:
            wrong = answer_sentences(g.pair.neighbour.text, 2)
            if wrong and wrong not in g.pair.answer:
                rejected = f"{wrong} [{g.gold}]"
        elif failure == "invented_citation":
            rejected = f"{g.pair.answer} [{K_PASSAGES + rng.randint(1, 3)}]"
        if rejected is not None:
            out.append(dpo_record(f"dpo-{failure}-{g.pair.chunk.id}-{n}", g.prompt(), chosen,
                                  rejected, failure, src))
    return out


def verilog_pairs(tasks: Sequence[VerilogTask], failing: dict[str, list[str]],
                  rng: random.Random) -> list[dict]:
    """``failing_verilog`` pairs: for each task one mutant in ``failing`` (task id -> mutants
    verified to fail its testbench), the reference chosen."""
    out = []
    for t in tasks:
        if mutants := failing.get(t.id):
            out.append(dpo_record(f"dpo-failing_verilog-{t.id}", verilog_prompt(t.spec),
                                  verilog_answer(t.reference),
                                  verilog_answer(rng.choice(mutants)), "failing_verilog",
                                  VERILOG_SOURCE))
    return out
