"""Snippet -> explanation pairs: yosys library cells with the description their source file
gives them, and SPICE netlist lines from the ngspice manual explained element by element (the
element letter, nodes and value read by a small parser, so each explanation is correct by
construction)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from leanstack.chipexpert.chunking import Chunk
from leanstack.chipexpert.training.ic_sources import DocumentedCell

_NODE = r"[A-Za-z0-9_#]+"
_VALUE = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?[A-Za-z]*"
TWO_TERMINAL = {"R": ("resistor", "ohms"), "C": ("capacitor", "farads"),
                "L": ("inductor", "henries")}
_PASSIVE = re.compile(rf"^([RCL]\w*)\s+({_NODE})\s+({_NODE})\s+({_VALUE})\s*$", re.I)
_SOURCE = re.compile(rf"^([VI]\w*)\s+({_NODE})\s+({_NODE})\s+(?:DC\s+)?({_VALUE})\s*$", re.I)
_WAVE = re.compile(rf"^([VI]\w*)\s+({_NODE})\s+({_NODE})\s+.*?\b(PULSE|SIN|PWL|EXP|SFFM)\s*\(",
                   re.I)
_DIODE = re.compile(rf"^(D\w*)\s+({_NODE})\s+({_NODE})\s+([A-Za-z]\w*)\s*$", re.I)
_BJT = re.compile(rf"^(Q\w*)\s+({_NODE})\s+({_NODE})\s+({_NODE})\s+([A-Za-z]\w*)\s*$", re.I)
_MOS = re.compile(rf"^(M\w*)\s+({_NODE})\s+({_NODE})\s+({_NODE})\s+({_NODE})\s+([A-Za-z]\w*)"
                  r"(\s+.*)?$", re.I)
WAVES = {"PULSE": "pulse", "SIN": "sinusoidal", "PWL": "piece-wise linear",
         "EXP": "exponential", "SFFM": "single-frequency FM"}


@dataclass(frozen=True)
class Snippet:
    """A code snippet, its explanation, and where it came from."""

    id: str
    language: str
    code: str
    explanation: str
    source: str
    licence: str


def explain_spice_line(line: str) -> str | None:
    """One sentence on a SPICE element line, or None when it is not one this parser knows."""
    line = line.strip()
    if m := _PASSIVE.match(line):
        kind, unit = TWO_TERMINAL[m.group(1)[0].upper()]
        return (f"`{m.group(1)}` is a {kind} between nodes {m.group(2)} and {m.group(3)} of "
                f"{m.group(4)} {unit}.")
    if m := _WAVE.match(line):
        what = "voltage" if m.group(1)[0] in "Vv" else "current"
        return (f"`{m.group(1)}` is an independent {what} source from node {m.group(2)} (+) to "
                f"node {m.group(3)} (-) with a {WAVES[m.group(4).upper()]} waveform.")
    if m := _SOURCE.match(line):
        what = "voltage" if m.group(1)[0] in "Vv" else "current"
        return (f"`{m.group(1)}` is an independent DC {what} source of {m.group(4)} from node "
                f"{m.group(2)} (+) to node {m.group(3)} (-).")
    if m := _DIODE.match(line):
        return (f"`{m.group(1)}` is a diode with anode {m.group(2)}, cathode {m.group(3)} and "
                f"model {m.group(4)}.")
    if m := _BJT.match(line):
        return (f"`{m.group(1)}` is a bipolar transistor with collector {m.group(2)}, base "
                f"{m.group(3)}, emitter {m.group(4)} and model {m.group(5)}.")
    if m := _MOS.match(line):
        return (f"`{m.group(1)}` is a MOSFET with drain {m.group(2)}, gate {m.group(3)}, source "
                f"{m.group(4)}, bulk {m.group(5)} and model {m.group(6)}.")
    return None


def spice_snippets(chunks: list[Chunk], min_lines: int = 2) -> list[Snippet]:
    """Runs of at least ``min_lines`` consecutive element lines in the ngspice manual that the
    parser explains completely (comment lines starting with ``*`` pass through)."""
    out = []
    for c in chunks:
        if c.source != "ngspice-manual":
            continue
        run: list[tuple[str, str]] = []
        for line in [*c.text.splitlines(), ""]:
            why = explain_spice_line(line)
            if why is not None:
                run.append((line.strip(), why))
                continue
            if line.strip().startswith("*") and run:
                continue
            if len(run) >= min_lines:
                code = "\n".join(ln for ln, _ in run)
                out.append(Snippet(f"{c.id}-{len(out)}", "spice", code,
                                   " ".join(w for _, w in run), c.source, c.license))
            run = []
    return out


def cell_snippets(cells: list[DocumentedCell]) -> list[Snippet]:
    """Each documented yosys cell: its module and the file's own description of it."""
    return [Snippet(f"cell-{c.name}", "verilog", c.code,
                    f"This is the yosys internal cell `{c.name}`: {c.doc}", c.source, c.licence)
            for c in cells]
