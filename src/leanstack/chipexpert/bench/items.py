"""Benchmark items: the JSONL schema, a validator with one-line errors, and loading.

One item per line::

    {"id": "dig-001", "domain": "digital", "level": "foundational", "type": "numeric",
     "question": "...", "answer": "...", "key_facts": ["..."], "checker": {...},
     "tolerance": {"rel": 0.02}, "unit": "Hz"}

``choices`` (four strings, answer is their letter) and ``order`` (the shuffle that put the
correct choice at that letter, see ``choice_order.py``) for ``mcq``; ``tolerance``
({"rel": r} and/or {"abs": a}) and ``unit`` for ``numeric``; ``checker`` holds ``top`` and
``testbench`` for ``verilog`` and ``analysis`` (analysis + ``.meas`` lines), ``limits``
({name: [low, high]}) and an optional ``harness`` (sources and loads around the candidate's
netlist) for ``spice``; it is ``{}`` for the other types.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leanstack.errors import LeanstackError

ITEMS_DIR = Path(__file__).parent / "items"
DOMAINS = {
    "digital": "digital design", "analog": "analog design", "eda": "EDA", "soc": "SoC",
    "power": "power devices", "rf_circuits": "RF circuits", "rf_antennas": "RF antennas",
    "cim": "compute-in-memory", "nn_hw": "neural-network hardware",
}
LEVELS = ("foundational", "advanced")
TYPES = ("open", "mcq", "numeric", "verilog", "spice")
EXECUTABLE = ("verilog", "spice")
LETTERS = "ABCD"
VERILOG_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
REQUIRED = ("id", "domain", "level", "type", "question", "answer", "key_facts", "checker")
OPTIONAL = ("choices", "order", "tolerance", "unit")


@dataclass(frozen=True)
class Item:
    """One benchmark question with its reference answer and how to check an answer."""

    id: str
    domain: str
    level: str
    type: str
    question: str
    answer: str
    key_facts: list[str]
    checker: dict[str, Any]
    choices: list[str] = field(default_factory=list)
    order: list[int] = field(default_factory=list)
    tolerance: dict[str, float] = field(default_factory=dict)
    unit: str = ""

    @property
    def executable(self) -> bool:
        """Checked by running a simulator (Verilog or SPICE)."""
        return self.type in EXECUTABLE


def _problem(where: str, fld: str, msg: str) -> LeanstackError:
    return LeanstackError(f"{where}: field '{fld}' {msg}")


def _check_fields(rec: dict[str, Any], where: str) -> None:
    """Raise a one-line error naming the place, the field and the fix for a bad record."""
    for f in REQUIRED:
        if f not in rec:
            raise _problem(where, f, "is missing; add it (see bench/items.py for the schema)")
    extra = sorted(set(rec) - set(REQUIRED) - set(OPTIONAL))
    if extra:
        raise _problem(where, extra[0], f"is unknown; use only {', '.join(REQUIRED + OPTIONAL)}")
    for f in ("id", "question", "answer"):
        if not isinstance(rec[f], str) or not rec[f].strip():
            raise _problem(where, f, "must be a non-empty string")
    if rec["domain"] not in DOMAINS:
        raise _problem(where, "domain", f"is {rec['domain']!r}; use one of {', '.join(DOMAINS)}")
    if rec["level"] not in LEVELS:
        raise _problem(where, "level", f"is {rec['level']!r}; use one of {', '.join(LEVELS)}")
    if rec["type"] not in TYPES:
        raise _problem(where, "type", f"is {rec['type']!r}; use one of {', '.join(TYPES)}")
    if not (isinstance(rec["key_facts"], list)
            and all(isinstance(k, str) and k.strip() for k in rec["key_facts"])):
        raise _problem(where, "key_facts", "must be a list of non-empty strings")
    if not isinstance(rec["checker"], dict):
        raise _problem(where, "checker", "must be an object ({} for open, mcq and numeric)")
    kind = rec["type"]
    if kind == "open" and not rec["key_facts"]:
        raise _problem(where, "key_facts", "is empty; open items need facts to check coverage")
    if kind == "mcq":
        ch = rec.get("choices")
        if not (isinstance(ch, list) and len(ch) == 4 and all(isinstance(c, str) and c.strip()
                                                              for c in ch)):
            raise _problem(where, "choices", "must be a list of four non-empty strings")
        if len(set(ch)) != 4:
            raise _problem(where, "choices", "has duplicates; make the four choices distinct")
        if rec["answer"] not in LETTERS:
            raise _problem(where, "answer", f"is {rec['answer']!r}; an mcq answer is one of A-D")
        order = rec.get("order")
        if order is not None and not (isinstance(order, list)
                                      and all(type(i) is int for i in order)
                                      and sorted(order) == [0, 1, 2, 3]
                                      and LETTERS[order.index(0)] == rec["answer"]):
            raise _problem(where, "order", "must be a permutation of 0-3 with 0 (the correct "
                           "choice) at the answer's letter")
    elif "choices" in rec or "order" in rec:
        raise _problem(where, "choices" if "choices" in rec else "order",
                       f"belongs to mcq items only, not {kind}")
    if kind == "numeric":
        tol = rec.get("tolerance")
        if not (isinstance(tol, dict) and tol and set(tol) <= {"rel", "abs"}
                and all(isinstance(v, int | float) and v >= 0 for v in tol.values())):
            raise _problem(where, "tolerance", 'must be like {"rel": 0.02} or {"abs": 0.5}')
        if not isinstance(rec.get("unit"), str):
            raise _problem(where, "unit", 'must be a string ("" for a plain number)')
    if kind == "verilog":
        for f in ("top", "testbench"):
            if not isinstance(rec["checker"].get(f), str) or not rec["checker"][f].strip():
                raise _problem(where, f"checker.{f}", "must be a non-empty string")
        if not VERILOG_IDENTIFIER.fullmatch(rec["checker"]["top"]):
            raise _problem(where, "checker.top", "must be a Verilog identifier (it is passed "
                           "to yosys as 'synth -top NAME')")
    if kind == "spice":
        if not isinstance(rec["checker"].get("analysis"), str) or ".meas" not in \
                rec["checker"]["analysis"].lower():
            raise _problem(where, "checker.analysis", "must hold the analysis and .meas lines")
        limits = rec["checker"].get("limits")
        if not (isinstance(limits, dict) and limits and all(
                isinstance(v, list) and len(v) == 2 and all(isinstance(x, int | float) for x in v)
                and v[0] <= v[1] for v in limits.values())):
            raise _problem(where, "checker.limits", "must map .meas names to [low, high]")


def parse_item(rec: Any, where: str) -> Item:
    """Validate one decoded JSON record; ``where`` (file:line) prefixes any error."""
    if not isinstance(rec, dict):
        raise LeanstackError(f"{where}: an item must be a JSON object")
    _check_fields(rec, where)
    return Item(**rec)


def load_items(paths: list[Path] | None = None, domains: list[str] | None = None) -> list[Item]:
    """All items of ``paths`` (default: the shipped files), optionally only some domains;
    ids must be unique across the files."""
    if domains:
        unknown = sorted(set(domains) - set(DOMAINS))
        if unknown:
            raise LeanstackError(f"unknown domain(s) {', '.join(unknown)}; choose from "
                                 f"{', '.join(DOMAINS)}")
    paths = paths if paths is not None else sorted(ITEMS_DIR.glob("*.jsonl"))
    if not paths:
        raise LeanstackError(f"no item files (*.jsonl) in {ITEMS_DIR}; reinstall leanstack")
    items: list[Item] = []
    seen: dict[str, str] = {}
    for path in paths:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise LeanstackError(f"{path}: cannot read ({e.strerror}); check the path") from e
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{path.name}:{n}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise LeanstackError(f"{where}: not valid JSON ({e.msg}); one object per "
                                     "line") from e
            item = parse_item(rec, where)
            if item.id in seen:
                raise _problem(where, "id", f"{item.id!r} repeats {seen[item.id]}; make it unique")
            seen[item.id] = where
            items.append(item)
    return [it for it in items if not domains or it.domain in domains]
