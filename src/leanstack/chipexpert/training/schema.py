"""The records the training data is made of, and validators that say what is wrong in one line.

``cpt.jsonl``: ``{"id", "text", "source", "licence"}``.
``sft.jsonl``: ``{"id", "kind", "messages", "source", "licence"}``; ``messages`` is
``[system, user, assistant]`` with the assistant's own system prompt.
``dpo.jsonl``: ``{"id", "prompt", "chosen", "rejected", "failure", "source"}`` in TRL's
conversational preference format: ``prompt`` is ``[system, user]``, ``chosen`` and ``rejected``
are one assistant message each.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from leanstack.errors import LeanstackError

SFT_KINDS = ("command", "section", "snippet", "verilog", "grounded")
FAILURES = ("loop", "wrong_fact", "invented_citation", "failing_verilog")
_PASSAGE = re.compile(r"^\[(\d+)\] ", re.M)
_CITE = re.compile(r"\[(\d+)\]")


@dataclass(frozen=True)
class TextRecord:
    """One piece of continued-pre-training text with where it came from and its licence."""

    id: str
    text: str
    source: str
    licence: str

    def to_json(self) -> dict[str, str]:
        """The ``cpt.jsonl`` record."""
        return asdict(self)


def message(role: str, content: str) -> dict[str, str]:
    """One chat message."""
    return {"role": role, "content": content}


def shown_passages(user: str) -> set[int]:
    """The passage numbers ``[n]`` a grounded prompt shows (each at the start of a line)."""
    return {int(n) for n in _PASSAGE.findall(user)}


def cited(text: str) -> set[int]:
    """The passage numbers an answer cites."""
    return {int(n) for n in _CITE.findall(text)}


def _bad(where: str, msg: str) -> LeanstackError:
    return LeanstackError(f"{where}: {msg}; rebuild the training data")


def _check_messages(msgs: Any, roles: tuple[str, ...], where: str) -> None:
    if not isinstance(msgs, list) or [m.get("role") if isinstance(m, dict) else None
                                       for m in msgs] != list(roles):
        raise _bad(where, f"messages must have the roles {', '.join(roles)}")
    for m in msgs:
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            raise _bad(where, f"the {m['role']} message is empty")


def validate_sft(rec: dict[str, Any]) -> None:
    """Raise a one-line error unless ``rec`` is a well-formed SFT record; a grounded answer may
    cite only passages its prompt shows, and must cite at least one."""
    where = f"sft record {rec.get('id', '?')}"
    for f in ("id", "kind", "source", "licence"):
        if not isinstance(rec.get(f), str) or not rec[f]:
            raise _bad(where, f"field '{f}' is missing or empty")
    if rec["kind"] not in SFT_KINDS:
        raise _bad(where, f"kind {rec['kind']!r} is not one of {', '.join(SFT_KINDS)}")
    _check_messages(rec.get("messages"), ("system", "user", "assistant"), where)
    if rec["kind"] == "grounded":
        user, answer = rec["messages"][1]["content"], rec["messages"][2]["content"]
        shown, used = shown_passages(user), cited(answer)
        if not used or not used <= shown:
            raise _bad(where, f"the answer cites {sorted(used)} but the prompt shows "
                       f"{sorted(shown)}")


def validate_dpo(rec: dict[str, Any]) -> None:
    """Raise a one-line error unless ``rec`` is a well-formed preference pair; an
    ``invented_citation`` rejection cites a passage the prompt does not show, and the chosen
    answer of a grounded prompt cites only shown ones."""
    where = f"dpo record {rec.get('id', '?')}"
    for f in ("id", "failure", "source"):
        if not isinstance(rec.get(f), str) or not rec[f]:
            raise _bad(where, f"field '{f}' is missing or empty")
    if rec["failure"] not in FAILURES:
        raise _bad(where, f"failure {rec['failure']!r} is not one of {', '.join(FAILURES)}")
    _check_messages(rec.get("prompt"), ("system", "user"), where)
    _check_messages(rec.get("chosen"), ("assistant",), where)
    _check_messages(rec.get("rejected"), ("assistant",), where)
    chosen, rejected = rec["chosen"][0]["content"], rec["rejected"][0]["content"]
    if chosen.strip() == rejected.strip():
        raise _bad(where, "chosen and rejected are the same")
    shown = shown_passages(rec["prompt"][1]["content"])
    if shown and not cited(chosen) <= shown:
        raise _bad(where, "the chosen answer cites a passage the prompt does not show")
    if rec["failure"] == "invented_citation" and not cited(rejected) - shown:
        raise _bad(where, "an invented_citation rejection must cite a passage that is not shown")
