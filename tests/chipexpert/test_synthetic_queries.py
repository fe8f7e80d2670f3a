"""Synthetic training queries: options read from help text, the filter for model-written
questions, their cache (reused, never regenerated; a damaged one is a clear error)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from leanstack.chipexpert.chunking import Chunk
from leanstack.chipexpert.synthetic_queries import (
    Option,
    clean_model_question,
    extract_options,
    model_queries,
    option_queries,
    synthetic_queries,
)
from leanstack.errors import LeanstackError

YOSYS_HELP = """extract_fa [options] [selection]

This pass extracts full/half adders from a gate-level design.

-fa, -ha
Enable cell types (fa=full adder, ha=half adder)
All types are enabled if none of this options is used

-d <int>
Set maximum depth for extracted logic cones (default=20)

-v
Verbose output"""

MAN_PAGE = """-o outfile or --output=outfile
All logs generated during a batch run (-b) will be saved in outfile.

-E Preprocess the Verilog source, but do not compile it. The output file is the input.
--prof-exec Enable generating execution profile for gantt chart
-t TERM

--terminal=TERM"""

PROSE = """The simulator reads the netlist first. A value such as -5 V or - 3 dB is not an
option, and neither is a dash list:
- first item of a list
- second item of a list"""


def chunk(text: str, source: str = "man-ngspice", section: str = "Options",
          cid: str = "c") -> Chunk:
    return Chunk(cid, source, section, text, "x")


def test_options_of_yosys_help_with_descriptions_on_the_next_lines() -> None:
    options = extract_options(YOSYS_HELP)
    assert options == [
        Option(("-fa", "-ha"), "Enable cell types (fa=full adder, ha=half adder) All types are "
                               "enabled if none of this options is used"),
        Option(("-d",), "Set maximum depth for extracted logic cones (default=20)")]
    # "-v / Verbose output" is two words: too short to ask about


def test_options_of_man_pages_inline_and_with_aliases() -> None:
    options = {o.flags: o.description for o in extract_options(MAN_PAGE)}
    assert options == {
        ("-o", "--output"): "All logs generated during a batch run (-b) will be saved in outfile",
        ("-E",): "Preprocess the Verilog source, but do not compile it",
        ("--prof-exec",): "Enable generating execution profile for gantt chart"}


def test_prose_without_options_gives_none() -> None:
    assert extract_options(PROSE) == []
    assert option_queries([chunk(PROSE)]) == []


def test_option_queries_name_the_command_and_ask_the_task() -> None:
    chunks = [chunk(YOSYS_HELP, "yosys-help", "extract_fa -- find and extract full/half adders"),
              chunk(MAN_PAGE), chunk(MAN_PAGE, "py-amaranth", "amaranth.sim")]
    queries = option_queries(chunks)
    texts = {q for q, _, _ in queries}
    assert "what does the -d option of yosys extract_fa do?" in texts
    assert "how do I set maximum depth for extracted logic cones in yosys extract_fa?" in texts
    assert "what does the -o option of ngspice do?" in texts
    assert "how do I preprocess the Verilog source, but do not compile it in ngspice?" in texts
    assert {row for _, row, _ in queries} == {0, 1}  # docstrings name no command
    assert {kind for _, _, kind in queries} == {"option"}


@pytest.mark.parametrize("raw, kept", [
    ("What does the -d option of extract_fa limit?", True),
    ("247\n\nQuestion: How do I save simulation results to a raw file?", True),
    ("This text is about extracting counters.", False),  # no question
    ("Why?", False),  # too short
    ("What " + "very " * 40 + "long?", False),
    ("What a great question! I'd be happy to answer it?", False),
    ("What is the purpose of the passage above?", False),
    ("This pass extracts full/half adders from a gate-level design?", False),  # a copy
])
def test_model_question_filter(raw: str, kept: bool) -> None:
    question = clean_model_question(raw, YOSYS_HELP)
    assert (question is not None) == kept
    if kept:
        assert question.endswith("?") and question[0].isupper()


def fake_writer(calls: list[int]):
    def write(batch: list[Chunk]) -> list[str]:
        calls.append(len(batch))
        return [f"How is chunk number {c.id} used in practice?" for c in batch]
    return write


def test_model_queries_are_cached_and_not_written_again(tmp_path: Path) -> None:
    chunks = [chunk(f"text {i}", cid=f"id{i}") for i in range(20)]
    cache = tmp_path / "models" / "synthetic_queries.jsonl"
    calls: list[int] = []
    first = model_queries(chunks, 12, cache, random.Random(1), fake_writer(calls))
    assert sum(calls) == 12 and len(first) == 12
    assert all(q == f"How is chunk number {chunks[row].id} used in practice?"
               for q, row, _ in first)
    records = [json.loads(line) for line in cache.read_text().splitlines()]
    assert {r["chunk"] for r in records} == {chunks[row].id for _, row, _ in first}
    again = model_queries(chunks, 12, cache, random.Random(1), fake_writer(calls))
    assert again == first and sum(calls) == 12  # all from the cache
    more = model_queries(chunks, 20, cache, random.Random(1), fake_writer(calls))
    assert len(more) == 20 and sum(calls) == 20  # only the 8 new chunks were written
    model_queries(chunks, 12, cache, random.Random(1), fake_writer(calls), model_name="other")
    assert sum(calls) == 32  # another model's questions are its own


def test_a_damaged_cache_is_a_one_line_error(tmp_path: Path) -> None:
    chunks = [chunk("text", cid="a")]
    cache = tmp_path / "synthetic_queries.jsonl"
    cache.write_text("{not json\n")
    with pytest.raises(LeanstackError, match="not valid JSON") as bad_json:
        model_queries(chunks, 1, cache, random.Random(0), fake_writer([]))
    cache.write_text('{"chunk": "a"}\n')
    with pytest.raises(LeanstackError, match="delete the file") as bad_record:
        model_queries(chunks, 1, cache, random.Random(0), fake_writer([]))
    for err in (bad_json, bad_record):
        assert "\n" not in str(err.value)


def test_query_mix_follows_the_counts(tmp_path: Path) -> None:
    chunks = [chunk(YOSYS_HELP, "yosys-help", "extract_fa -- find and extract full/half adders",
                    "y"), chunk(MAN_PAGE, cid="m")]
    calls: list[int] = []
    queries = synthetic_queries(chunks, {"title": 1, "option": 3, "model": 2}, 0,
                                tmp_path / "cache.jsonl", fake_writer(calls))
    kinds = [k for _, _, k in queries]
    assert (kinds.count("title"), kinds.count("option"), kinds.count("model")) == (1, 3, 2)
    with pytest.raises(LeanstackError, match="unknown synthetic query kinds"):
        synthetic_queries(chunks, {"titles": 1})
    with pytest.raises(LeanstackError, match="cache file"):
        synthetic_queries(chunks, {"model": 1})


@pytest.mark.slow
def test_the_local_model_writes_questions_into_the_cache(tmp_path: Path) -> None:
    chunks = [chunk(YOSYS_HELP, "yosys-help", "extract_fa -- find and extract full/half adders",
                    "y"), chunk(MAN_PAGE, cid="m")]
    cache = tmp_path / "cache.jsonl"
    model_queries(chunks, 2, cache, random.Random(0))
    records = [json.loads(line) for line in cache.read_text().splitlines()]
    assert {r["chunk"] for r in records} == {"y", "m"}
    assert all(r["model"] == "SmolLM2-135M-Instruct" and r["raw"].strip() for r in records)
