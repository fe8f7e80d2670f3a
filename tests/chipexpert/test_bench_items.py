"""The shipped ChipICD-Bench items and the schema validator."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from leanstack.chipexpert.bench.checkers import answer_value
from leanstack.chipexpert.bench.choice_order import balanced_orders, shown_choices
from leanstack.chipexpert.bench.items import DOMAINS, load_items
from leanstack.errors import LeanstackError

FOUNDATIONAL = ("digital", "analog", "eda", "soc", "power", "rf_circuits", "rf_antennas")
GOOD = {"id": "x-1", "domain": "digital", "level": "foundational", "type": "mcq",
        "question": "Which?", "answer": "B", "key_facts": [], "checker": {},
        "choices": ["a", "b", "c", "d"]}


def test_shipped_items_cover_the_benchmark() -> None:
    items = load_items()
    assert len(items) >= 300
    assert len({it.id for it in items}) == len(items)
    kinds = Counter(it.type for it in items)
    assert kinds["verilog"] >= 40 and kinds["spice"] >= 25
    assert {it.domain for it in items} == set(DOMAINS)
    for domain in DOMAINS:
        mine = Counter(it.type for it in items if it.domain == domain)
        assert mine["open"] and mine["mcq"] and mine["numeric"], domain
    for domain in FOUNDATIONAL:  # the paper's foundational sub-domains hold some advanced items
        levels = {it.level for it in items if it.domain == domain}
        assert levels == {"foundational", "advanced"}, domain
    assert all(it.level == "advanced" for it in items if it.domain in ("cim", "nn_hw"))


def test_numeric_references_parse_and_mcq_keys_are_letters() -> None:
    for it in load_items():
        if it.type == "numeric":
            assert answer_value(it.answer, it.unit) is not None, it.id
        if it.type == "mcq":
            assert it.answer in "ABCD" and len(it.choices) == 4, it.id


def test_mcq_letters_are_balanced_by_the_recorded_shuffle() -> None:
    mcq = [it for it in load_items() if it.type == "mcq"]
    letters = Counter(it.answer for it in mcq)
    assert set(letters) == set("ABCD") and max(letters.values()) - min(letters.values()) <= 1
    orders = balanced_orders(it.id for it in mcq)
    for it in mcq:
        assert it.order == orders[it.id], it.id  # the deterministic shuffle, reproducible
        written = [it.choices[it.order.index(n)] for n in range(4)]
        assert shown_choices(written, it.order) == (it.choices, it.answer), it.id


def test_mcq_choice_length_gives_the_answer_away_no_more_than_chance() -> None:
    """Always picking the longest (or the shortest) choice must not beat guessing by much."""
    mcq = [it for it in load_items() if it.type == "mcq"]
    for extreme in (max, min):
        hits = sum(extreme(range(4), key=lambda j, it=it: len(it.choices[j])) ==
                   "ABCD".index(it.answer) for it in mcq)
        assert hits / len(mcq) <= 0.35, extreme.__name__


def test_domain_filter_and_unknown_domain() -> None:
    assert {it.domain for it in load_items(domains=["eda", "cim"])} == {"eda", "cim"}
    with pytest.raises(LeanstackError, match="unknown domain.*nope"):
        load_items(domains=["nope"])


def write(tmp_path: Path, *records: object) -> Path:
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records))
    return path


@pytest.mark.parametrize(("change", "message"), [
    ({"level": "expert"}, r"items.jsonl:1: field 'level' is 'expert'; use one of"),
    ({"answer": "E"}, r"field 'answer' is 'E'; an mcq answer is one of A-D"),
    ({"choices": ["a", "b"]}, r"field 'choices' must be a list of four"),
    ({"type": "open", "key_facts": ["x"]}, r"field 'choices' belongs to mcq items only"),
    ({"type": "open"}, r"field 'key_facts' is empty"),
    ({"extra": 1}, r"field 'extra' is unknown"),
    ({"order": [0, 1, 2, 3]}, r"field 'order' must be a permutation of 0-3 with 0"),
    ({"order": [1, 0, 2]}, r"field 'order' must be a permutation"),
    ({"order": ["b", 0, 2, 3]}, r"field 'order' must be a permutation"),
    ({"type": "open", "key_facts": ["x"], "choices": None, "order": [1, 0, 2, 3]},
     r"field 'order' belongs to mcq items only"),
])
def test_validator_names_file_line_field_and_fix(tmp_path: Path, change: dict,
                                                 message: str) -> None:
    rec = {**GOOD, **change}
    rec = {k: v for k, v in rec.items() if v is not None}
    with pytest.raises(LeanstackError, match=message):
        load_items([write(tmp_path, rec)])


def test_validator_checks_executable_specs_and_missing_fields(tmp_path: Path) -> None:
    base = {k: v for k, v in GOOD.items() if k != "choices"}
    with pytest.raises(LeanstackError, match="field 'checker.testbench' must be"):
        load_items([write(tmp_path, base | {"type": "verilog", "checker": {"top": "m"}})])
    with pytest.raises(LeanstackError, match="field 'checker.limits' must map"):
        load_items([write(tmp_path, base | {"type": "spice", "checker": {
            "analysis": ".tran 1u 1m\n.meas tran v find v(a) at=1m", "limits": {"v": [2, 1]}}})])
    with pytest.raises(LeanstackError, match="field 'tolerance' must be like"):
        load_items([write(tmp_path, base | {"type": "numeric", "tolerance": {"pct": 1},
                                            "unit": "V"})])
    with pytest.raises(LeanstackError, match="items.jsonl:1: field 'key_facts' is missing"):
        load_items([write(tmp_path, {k: v for k, v in GOOD.items() if k != "key_facts"})])


def test_duplicate_ids_and_bad_json_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(LeanstackError, match=r"items.jsonl:2: field 'id' 'x-1' repeats "
                                             r"items.jsonl:1"):
        load_items([write(tmp_path, GOOD, GOOD)])
    with pytest.raises(LeanstackError, match=r"items.jsonl:2: not valid JSON"):
        load_items([write(tmp_path, GOOD, "{oops")])
    with pytest.raises(LeanstackError, match="cannot read"):
        load_items([tmp_path / "missing.jsonl"])


def test_open_references_cover_their_key_facts() -> None:
    from leanstack.chipexpert.bench.checkers import fact_coverage

    for it in load_items():
        if it.type == "open":
            assert fact_coverage(it.key_facts, it.answer) == 1.0, it.id
