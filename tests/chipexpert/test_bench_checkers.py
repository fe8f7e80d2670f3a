"""Every executable reference passes its checker, broken answers fail, limits hold."""

from __future__ import annotations

import dataclasses
import re
import tempfile
import time
from pathlib import Path

import pytest
from tests._require import needs, require

from leanstack.chipexpert.bench import checkers
from leanstack.chipexpert.bench.checkers import (
    Check,
    OpenScorer,
    answer_value,
    check_answer,
    check_many,
    check_verilog,
    extract_netlist,
    extract_verilog,
    fact_coverage,
    parse_letter,
    parse_quantities,
)
from leanstack.chipexpert.bench.items import Item, load_items, parse_item
from leanstack.chipexpert.bench.sandbox import run_limited
from leanstack.errors import LeanstackError

ITEMS = {it.id: it for it in load_items()}
EXECUTABLE = sorted(i for i, it in ITEMS.items() if it.executable)
needs_tools = needs(checkers.tools_missing, "run scripts/system-deps.sh")


def hollow_module(code: str) -> str:
    """The reference's module header with no body: outputs undriven."""
    header = re.search(r"\bmodule\b.*?\);", code, re.S)
    assert header, code
    return header.group(0) + "\nendmodule\n"


def without_last_element(netlist: str) -> str:
    """The reference netlist minus its last element line (a component left out)."""
    lines = netlist.splitlines()
    last = max(n for n, line in enumerate(lines) if line.strip()
               and not line.startswith((".", "*", "+")))
    return "\n".join(lines[:last] + lines[last + 1:]) or "* empty"


def broken(item: Item) -> str:
    return hollow_module(item.answer) if item.type == "verilog" else without_last_element(
        item.answer)


# Subtly wrong answers: (item, text replaced, replacement).
TARGETED = [
    ("counter4", "q <= q + 4'd1", "q <= q + 4'd2"),                   # counts by two
    ("bcd_counter", "(q == 4'd9) ? 4'd0", "(q == 4'd10) ? 4'd0"),     # counts to 10
    ("seq1011", "hist <= {hist[1:0], din};",                           # misses overlaps
     "hist <= ({hist, din} == 4'b1011) ? 3'b000 : {hist[1:0], din};"),
    ("fifo4x8", "assign full = (count == 3'd4);", "assign full = (count == 3'd3);"),
    ("requant", "+ 17'sd8", "+ 17'sd0"),                              # truncates, no rounding
    ("sat_add8", "else if (s < -9'sd128) y = -8'sd128;", ""),         # no negative clamp
    ("divider", "R1 in out 3k", "R1 in out 3.3k"),                     # wrong resistor
    ("RC low-pass", "C1 out 0 100n", "C1 out 0 1u"),                   # corner 10x too low
    ("L-match", "L1 in out 137.8n\nC1 out 0 13.78p", "L1 in out 13.78n\nC1 out 0 137.8p"),
]


def find(fragment: str) -> Item:
    """The first executable item whose top module or question names ``fragment``."""
    for it in ITEMS.values():
        if it.type == "verilog" and it.checker["top"] == fragment:
            return it
    return next(it for it in ITEMS.values() if it.type == "spice" and fragment in it.question)


@pytest.fixture(scope="module")
def outcomes() -> dict[str, dict[str, Check]]:
    """All reference, generic-broken and targeted answers, checked in parallel once."""
    require(checkers.tools_missing(), "run scripts/system-deps.sh")
    jobs = [(ITEMS[i], ITEMS[i].answer, "reference", i) for i in EXECUTABLE]
    jobs += [(ITEMS[i], broken(ITEMS[i]), "broken", i) for i in EXECUTABLE]
    for name, old, new in TARGETED:
        it = find(name)
        assert old in it.answer, name
        jobs.append((it, it.answer.replace(old, new), "targeted", name))
    checks = check_many([(it, text) for it, text, _, _ in jobs], workers=4)
    out: dict[str, dict[str, Check]] = {"reference": {}, "broken": {}, "targeted": {}}
    for (_, _, kind, key), chk in zip(jobs, checks, strict=True):
        out[kind][key] = chk
    return out


@needs_tools
@pytest.mark.parametrize("item_id", EXECUTABLE)
def test_reference_passes_and_broken_answer_fails(outcomes, item_id: str) -> None:
    ref = outcomes["reference"][item_id]
    assert ref.passed and ref.score == 1.0, ref.detail
    bad = outcomes["broken"][item_id]
    assert not bad.passed and bad.score == 0.0, bad.detail


@needs_tools
@pytest.mark.parametrize("name", [t[0] for t in TARGETED])
def test_subtly_wrong_answer_fails(outcomes, name: str) -> None:
    chk = outcomes["targeted"][name]
    assert not chk.passed, chk.detail


@needs_tools
def test_infinite_simulation_is_killed_within_the_limit() -> None:
    item = find("counter4")
    looping = """module counter4(input clk, input rst, input en, output reg [3:0] q);
  reg spin = 0;
  initial while (1) spin = ~spin;  // simulation time never advances
endmodule"""
    t0 = time.perf_counter()
    chk = check_verilog(item, looping, timeout_s=2)
    assert time.perf_counter() - t0 < 6
    assert not chk.passed and "killed after 2 s" in chk.detail


@needs_tools
def test_design_that_simulates_but_does_not_synthesize_fails() -> None:
    item = find("popcount8")
    code = """module popcount8(input [7:0] d, output reg [3:0] n);
  reg [7:0] t;
  always @* begin
    n = 0; t = d;
    while (t != 0) begin n = n + t[0]; t = t >> 1; end
  end
endmodule"""
    chk = check_verilog(item, code)
    assert not chk.passed and chk.detail.startswith("yosys synth failed"), chk.detail


@pytest.mark.parametrize(("line", "named"), [
    ('initial $system("true");', "$system"), ('`include "/etc/passwd"', "`include"),
    ('initial $readmemh("/etc/hosts", mem);', "$readmemh"),
    ('initial begin $dumpfile("/tmp/x.vcd"); $dumpvars; end', "$dumpfile"),
    ('integer f; initial f = $fopen("/tmp/x", "w");', "$fopen"),
    ('integer f; initial $fdisplayh(f, 1);', "$fdisplayh"),
    ('initial $writememb("/tmp/m", mem);', "$writememb"),
    ('integer c; initial c = $fgetc(0);', "$fgetc"),
    ('`define P(a, b) a``b', "``"),
])
def test_verilog_that_reaches_outside_is_refused(line: str, named: str) -> None:
    item = find("relu8")
    chk = check_verilog(item, item.answer.replace("endmodule", f"{line}\nendmodule"))
    assert not chk.passed and named in chk.detail, chk.detail


@needs_tools
def test_macro_that_assembles_a_forbidden_task_is_refused() -> None:
    item = find("relu8")
    code = item.answer.replace("endmodule", '`define OPEN $fo\n`define EN pen\n'
                               'integer f; initial f = `OPEN`EN("x", "w");\nendmodule')
    chk = check_verilog(item, code)
    assert not chk.passed and "after macro expansion" in chk.detail, chk.detail


def test_allowed_system_tasks_are_not_mistaken_for_file_tasks() -> None:
    assert checkers.FORBIDDEN_VERILOG.search('initial begin $display("x"); $finish; $fatal; end '
                                             "initial $monitor(a); wire [3:0] f = $floor(1);") \
        is None


def test_top_must_be_an_identifier() -> None:
    item = find("relu8")
    rec = {"id": item.id, "domain": item.domain, "level": item.level, "type": "verilog",
           "question": item.question, "answer": item.answer, "key_facts": item.key_facts,
           "checker": {**item.checker, "top": "relu8; write_verilog /tmp/x.v"}}
    with pytest.raises(LeanstackError, match="checker.top.*Verilog identifier"):
        parse_item(rec, "items.jsonl:1")
    bad = dataclasses.replace(item, checker=rec["checker"])
    with pytest.raises(LeanstackError, match="not a Verilog identifier"):
        check_verilog(bad, item.answer)


ESCAPE_TB = """module tb;
  integer f;
  initial begin
    f = $fopen("{target}", "w");
    $fdisplay(f, "escaped");
    $fclose(f);
    $dumpfile("{dump}");
    $dumpvars(0, tb);
    #1 $display("done");
    $finish;
  end
endmodule
"""


@needs_tools
def test_simulator_cannot_write_outside_its_directory(tmp_path) -> None:
    """A testbench that writes to absolute paths outside the box (an existing directory on
    another file system, and under /tmp): vvp runs, no file appears; the box itself is
    writable."""
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else tmp_path) as other:
        outside, dump = Path(other) / "escaped.txt", tmp_path / "wave.vcd"
        box = tmp_path / "box"
        box.mkdir()
        (box / "tb.v").write_text(ESCAPE_TB.format(target=outside, dump=dump))
        assert run_limited(["iverilog", "-o", "sim.vvp", "tb.v"], box, 10).ok
        sim = run_limited(["vvp", "-n", "sim.vvp"], box, 10)
        assert sim.returncode is not None and not sim.timed_out
        assert not outside.exists() and not dump.exists()
        shell = run_limited(["sh", "-c", f"echo x > {other}/sh.txt; echo z > inside.txt"], box, 10)
        assert not (Path(other) / "sh.txt").exists()
        assert "Read-only file system" in shell.stderr
        assert (box / "inside.txt").read_text() == "z\n"


def test_code_extraction() -> None:
    reply = ("Here it is:\n```verilog\nmodule m(input a, output y);\nassign y = a;\n"
             "endmodule\n```\nDone.")
    assert extract_verilog(reply) == "module m(input a, output y);\nassign y = a;\nendmodule\n"
    assert extract_verilog("no code here") is None
    assert extract_verilog("This module is simple. See the endmodule keyword.") is None


def test_prose_that_mentions_module_before_the_design_is_skipped() -> None:
    design = "module m #(parameter W = 2) (input [W-1:0] a, output y);\nassign y = &a;\nendmodule"
    prose = ("The module below is a reduction AND; each module port is listed.\n"
             + design + "\nThis module synthesises to one gate.")
    assert extract_verilog(prose) == design + "\n"
    fenced = f"A module for you:\n```verilog\n// this module ANDs\n{design}\n```"
    assert extract_verilog(fenced) == design + "\n"


@needs_tools
def test_correct_design_after_prose_about_the_module_passes() -> None:
    item = find("relu8")
    chk = check_verilog(item, "Sure. This module clamps negative inputs to zero; the module "
                              "is combinational.\n\n" + item.answer)
    assert chk.passed, chk.detail
    netlist = extract_netlist("```spice\nR1 a b 1k\n.tran 1u 1m\n.control\nshell rm -rf x\n"
                              ".endc\n.include /etc/passwd\nC1 b 0 1n\n.end\n```")
    assert netlist.split("\n") == ["R1 a b 1k", "C1 b 0 1n"]


@pytest.mark.parametrize(("text", "unit", "value"), [
    ("2.2 kΩ", "Ω", 2200.0), ("2.2k", "Ω", 2200.0), ("15 mA", "A", 0.015),
    ("3.3e-9", "F", 3.3e-9), ("1.5 × 10^3 Hz", "Hz", 1500.0), ("0.5 m", "m", 0.5),
    ("5 mm", "m", 0.005), ("12.5 cm", "m", 0.125), ("-48 dBm", "dBm", -48.0),
    ("1,200 cycles", "", 1200.0), ("4.7 uF", "F", 4.7e-6), ("100 ohms", "Ω", 100.0),
])
def test_quantity_parsing(text: str, unit: str, value: float) -> None:
    assert answer_value(text, unit) == pytest.approx(value)


def test_answer_value_prefers_the_answer_line_and_the_unit() -> None:
    assert answer_value("f = 1/(2*pi*R*C) with R = 10 kOhm gives\nAnswer: 1.59 kHz", "Hz") == \
        pytest.approx(1590)
    assert answer_value("At 3 stages, 250 MHz is the limit, i.e. 4 ns.", "Hz") == \
        pytest.approx(250e6)
    assert parse_quantities("no digits", "V") == []


def test_numeric_check_tolerance() -> None:
    item = next(it for it in ITEMS.values() if it.type == "numeric" and it.unit == "Hz"
                and "maximum clock frequency" in it.question)  # 250 MHz, 2 %
    assert check_answer(item, "Answer: 252 MHz").passed
    assert not check_answer(item, "Answer: 260 MHz").passed
    assert check_answer(item, "I do not know").detail == "no number found"


def test_mcq_letters() -> None:
    assert parse_letter("The answer is (C) because...") == "C"
    assert parse_letter("B. Two flip-flops") == "B"
    assert parse_letter("Answer: d") == "D"
    assert parse_letter("none of these") is None
    item = next(it for it in ITEMS.values() if it.type == "mcq")
    assert check_answer(item, item.answer).passed
    wrong = next(letter for letter in "ABCD" if letter != item.answer)
    assert not check_answer(item, f"Answer: {wrong}").passed


def test_fact_coverage_uses_word_sets_and_alternatives() -> None:
    facts = ["setup time", "metastable|metastability", "clock edge"]
    assert fact_coverage(facts, "Setup time before the clock edge.") == pytest.approx(2 / 3)
    assert fact_coverage(facts, "It may go METASTABLE; setup time; the clock edge") == 1.0
    assert fact_coverage(facts, "") == 0.0


def test_open_scorer_mixes_similarity_and_facts() -> None:
    item = next(it for it in ITEMS.values() if it.type == "open")
    same = OpenScorer(embed=lambda texts: [[1.0, 0.0]] * len(texts))
    assert same.check(item, item.answer).score == pytest.approx(1.0)
    ortho = OpenScorer(embed=lambda texts: [[1.0, 0.0], [0.0, 1.0]])
    chk = ortho.check(item, "nothing relevant")
    assert chk.score == 0.0 and not chk.passed
    assert not same.check(item, "   ").passed


def test_open_scorer_with_minilm_ranks_reference_above_unrelated(embedding_model) -> None:
    from leanstack.chipexpert.dense import embed

    scorer = OpenScorer(embed=lambda texts: embed(embedding_model, texts).tolist())
    item = next(it for it in ITEMS.values() if it.type == "open" and "latch" in it.question)
    good = scorer.check(item, item.answer)
    paraphrase = scorer.check(item, "A latch is transparent while enabled (level-sensitive); a "
                                    "flip-flop is edge-triggered and samples at the clock edge.")
    unrelated = scorer.check(item, "Antenna gain is directivity times radiation efficiency.")
    assert good.score > 0.9
    assert paraphrase.score > unrelated.score + 0.3
