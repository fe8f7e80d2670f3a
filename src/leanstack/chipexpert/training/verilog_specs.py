"""Spec-to-Verilog training tasks: parameterised design families, each giving a spec, a
reference module, a self-checking testbench (a behavioural model in the bench, random vectors
plus corner cases) and buggy variants for preference pairs.

The families are chosen to differ from ChipICD-Bench's Verilog items (no multiplexers,
decoders, priority encoders, Gray-code converters, up counters, comparators...); the n-gram
decontamination checks the wording on top of that.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

VECTORS = 300  # random vectors (combinational) or clock cycles (sequential) per testbench


@dataclass(frozen=True)
class Port:
    """One port: direction ``input``/``output``, width in bits, whether an output is ``reg``."""

    name: str
    direction: str
    width: int = 1
    reg: bool = False

    def decl(self) -> str:
        """The ANSI port declaration, e.g. ``output reg [7:0] y``."""
        parts = [self.direction]
        if self.reg:
            parts.append("reg")
        if self.width > 1:
            parts.append(f"[{self.width - 1}:0]")
        return " ".join([*parts, self.name])


@dataclass(frozen=True)
class VerilogTask:
    """A spec, its reference module and testbench, and buggy variants (each a whole module)."""

    id: str
    family: str
    top: str
    spec: str
    reference: str
    testbench: str
    mutants: tuple[str, ...]


@dataclass(frozen=True)
class Family:
    """A design family at width ``{W}``: behaviour text, body of the reference, the bench's
    model statements (setting ``exp_<output>``; sequential ones keep state in them), and the
    bodies of buggy variants. ``{W}``, ``{W1}`` (W-1), ``{W2}`` (2W) and ``{K}`` are filled."""

    name: str
    kind: str
    behaviour: str
    inputs: tuple[tuple[str, str], ...]  # (name, width expression)
    outputs: tuple[tuple[str, str, bool], ...]  # (name, width expression, reg)
    body: str
    model: str
    mutants: tuple[str, ...]
    widths: tuple[int, ...]
    sequential: bool = False


def _fill(text: str, w: int) -> str:
    k = max(1, (w - 1).bit_length())
    return (text.replace("{W1}", str(w - 1)).replace("{W2}", str(2 * w))
            .replace("{WP1}", str(w + 1)).replace("{K}", str(k)).replace("{W}", str(w)))


def _width(expr: str, w: int) -> int:
    return int(eval(_fill(expr, w), {"__builtins__": {}}))  # noqa: S307 - our own constants


FAMILIES: tuple[Family, ...] = (
    Family("absdiff", "combinational", "y is the absolute difference |a - b| of the two "
           "unsigned inputs", (("a", "{W}"), ("b", "{W}")), (("y", "{W}", False),),
           "  assign y = (a > b) ? a - b : b - a;",
           "exp_y = (a > b) ? a - b : b - a;",
           ("  assign y = a - b;", "  assign y = (a < b) ? a - b : b - a;"), (4, 6, 8, 10, 12, 16)),
    Family("minmax", "combinational", "lo is the smaller and hi the larger of the two unsigned "
           "inputs", (("a", "{W}"), ("b", "{W}")), (("lo", "{W}", False), ("hi", "{W}", False)),
           "  assign lo = (a < b) ? a : b;\n  assign hi = (a < b) ? b : a;",
           "exp_lo = (a < b) ? a : b; exp_hi = (a < b) ? b : a;",
           ("  assign lo = (a < b) ? a : b;\n  assign hi = (a < b) ? a : b;",
            "  assign lo = (a > b) ? a : b;\n  assign hi = (a > b) ? b : a;"),
           (4, 6, 8, 12, 16)),
    Family("bitrev", "combinational", "y is d with its bit order reversed (y[i] = d[{W1} - i])",
           (("d", "{W}"),), (("y", "{W}", True),),
           "  integer i;\n  always @* begin\n    for (i = 0; i < {W}; i = i + 1)\n"
           "      y[i] = d[{W1} - i];\n  end",
           "for (k = 0; k < {W}; k = k + 1) exp_y[k] = d[{W1} - k];",
           ("  always @* y = d;",
            "  integer i;\n  always @* begin\n    for (i = 0; i < {W}; i = i + 1)\n"
            "      y[i] = d[{W} - i - 2];\n  end"), (4, 5, 6, 8, 12, 16)),
    Family("sext", "combinational", "y is the {W}-bit two's-complement input d sign-extended to "
           "{W2} bits", (("d", "{W}"),), (("y", "{W2}", False),),
           "  assign y = {{{W}{d[{W1}]}}, d};", "exp_y = {{{W}{d[{W1}]}}, d};",
           ("  assign y = {{{W}{1'b0}}, d};",), (3, 4, 6, 8, 12, 16)),
    Family("lzc", "combinational", "n is the number of leading zero bits of d, counted from the "
           "most significant bit ({W} when d is zero)", (("d", "{W}"),),
           (("n", "{K}+1", True),),
           "  integer i;\n  reg found;\n  always @* begin\n    n = 0; found = 0;\n"
           "    for (i = {W1}; i >= 0; i = i - 1)\n      if (!found) begin\n"
           "        if (d[i]) found = 1; else n = n + 1;\n      end\n  end",
           "exp_n = 0; hit = 0; for (k = {W1}; k >= 0; k = k - 1) if (!hit) begin "
           "if (d[k]) hit = 1; else exp_n = exp_n + 1; end",
           ("  integer i;\n  reg found;\n  always @* begin\n    n = 0; found = 0;\n"
            "    for (i = 0; i <= {W1}; i = i + 1)\n      if (!found) begin\n"
            "        if (d[i]) found = 1; else n = n + 1;\n      end\n  end",), (4, 8, 16)),
    Family("onehot_chk", "combinational", "y is 1 exactly when d has one and only one bit set",
           (("d", "{W}"),), (("y", "1", False),),
           "  assign y = (d != 0) && ((d & (d - 1'b1)) == 0);",
           "exp_y = (d != 0) && ((d & (d - 1)) == 0);",
           ("  assign y = |d;", "  assign y = ((d & (d - 1'b1)) == 0);"), (4, 6, 8, 12, 16)),
    Family("maj3", "combinational", "each bit of y is the majority vote of the same bit of a, b "
           "and c", (("a", "{W}"), ("b", "{W}"), ("c", "{W}")), (("y", "{W}", False),),
           "  assign y = (a & b) | (a & c) | (b & c);", "exp_y = (a & b) | (a & c) | (b & c);",
           ("  assign y = a & b & c;", "  assign y = a ^ b ^ c;"), (1, 4, 8, 16)),
    Family("therm", "combinational", "t is the thermometer code of n: its n lowest bits are 1 "
           "and the others 0", (("n", "{K}"),), (("t", "{W}", False),),
           "  assign t = ({{W}{1'b1}} << n) ^ {{W}{1'b1}};",
           "exp_t = 0; for (k = 0; k < {W}; k = k + 1) if (k < n) exp_t[k] = 1'b1;",
           ("  assign t = 1'b1 << n;", "  assign t = ({{W}{1'b1}} << (n + 1'b1)) ^ {{W}{1'b1}};"),
           (4, 8, 16)),
    Family("absval", "combinational", "y is the magnitude of the signed input d (the most "
           "negative value maps to itself)", (("d", "{W}"),), (("y", "{W}", False),),
           "  assign y = d[{W1}] ? -d : d;", "exp_y = d[{W1}] ? -d : d;",
           ("  assign y = d;", "  assign y = d[{W1}] ? ~d : d;"), (4, 6, 8, 12, 16)),
    Family("avg2", "combinational", "y is the unsigned average (a + b) / 2 rounded down, with "
           "no overflow for any inputs", (("a", "{W}"), ("b", "{W}")), (("y", "{W}", False),),
           "  wire [{W}:0] s = a + b;\n  assign y = s[{W}:1];",
           "exp_y = ({1'b0, a} + {1'b0, b}) >> 1;",
           ("  wire [{W1}:0] s = a + b;\n  assign y = s >> 1;",), (4, 6, 8, 12, 16)),
    Family("zdet", "combinational", "z is 1 when d is all zeros and o is 1 when d is all ones",
           (("d", "{W}"),), (("z", "1", False), ("o", "1", False)),
           "  assign z = ~|d;\n  assign o = &d;", "exp_z = (d == 0); exp_o = (d == {{W}{1'b1}});",
           ("  assign z = ~|d;\n  assign o = |d;", "  assign z = ~&d;\n  assign o = &d;"),
           (4, 8, 12, 16)),
    Family("accum", "sequential", "an accumulator: on each rising clock edge a synchronous rst "
           "clears q, otherwise when en is 1 q becomes q + d (wrapping at {W} bits)",
           (("rst", "1"), ("en", "1"), ("d", "{W}")), (("q", "{W}", True),),
           "  always @(posedge clk)\n    if (rst) q <= 0;\n    else if (en) q <= q + d;",
           "if (rst) exp_q = 0; else if (en) exp_q = exp_q + d;",
           ("  always @(posedge clk)\n    if (rst) q <= 0;\n    else q <= q + d;",
            "  always @(posedge clk)\n    if (en) q <= q + d;\n    else if (rst) q <= 0;"),
           (4, 6, 8, 12, 16), sequential=True),
    Family("downcnt", "sequential", "a loadable down counter that stops at zero: on each rising "
           "clock edge a synchronous rst clears q, else load copies d into q, else q decrements "
           "unless it is already 0", (("rst", "1"), ("load", "1"), ("d", "{W}")),
           (("q", "{W}", True),),
           "  always @(posedge clk)\n    if (rst) q <= 0;\n    else if (load) q <= d;\n"
           "    else if (q != 0) q <= q - 1'b1;",
           "if (rst) exp_q = 0; else if (load) exp_q = d; else if (exp_q != 0) exp_q = exp_q - 1;",
           ("  always @(posedge clk)\n    if (rst) q <= 0;\n    else if (load) q <= d;\n"
            "    else q <= q - 1'b1;",), (3, 4, 6, 8), sequential=True),
    Family("piso", "sequential", "a parallel-in serial-out shift register: on each rising clock "
           "edge a synchronous rst clears it, else load copies d into it, else it shifts left by "
           "one filling a 0; so is its most significant bit",
           (("rst", "1"), ("load", "1"), ("d", "{W}")), (("so", "1", False),),
           "  reg [{W1}:0] r;\n  always @(posedge clk)\n    if (rst) r <= 0;\n"
           "    else if (load) r <= d;\n    else r <= {r[{W}-2:0], 1'b0};\n  assign so = r[{W1}];",
           "if (rst) st = 0; else if (load) st = d; else st = st << 1; exp_so = st[{W1}];",
           ("  reg [{W1}:0] r;\n  always @(posedge clk)\n    if (rst) r <= 0;\n"
            "    else if (load) r <= d;\n    else r <= {1'b0, r[{W1}:1]};\n  assign so = r[0];",),
           (4, 6, 8, 12, 16), sequential=True),
    Family("fall_det", "sequential", "a falling-edge detector: p is 1 for the cycle after sig "
           "was sampled 1 on one rising clock edge and 0 on the next; a synchronous rst clears "
           "the stored sample (so no pulse follows it)", (("rst", "1"), ("sig", "1")),
           (("p", "1", False),),
           "  reg prev, cur;\n  always @(posedge clk)\n"
           "    if (rst) begin prev <= 0; cur <= 0; end\n"
           "    else begin prev <= cur; cur <= sig; end\n  assign p = prev & ~cur;",
           "if (rst) begin sp = 0; sc = 0; end else begin sp = sc; sc = sig; end "
           "exp_p = sp & ~sc;",
           ("  reg prev, cur;\n  always @(posedge clk)\n    if (rst) begin prev <= 0; cur <= 0; end"
            "\n    else begin prev <= cur; cur <= sig; end\n  assign p = ~prev & cur;",),
           (1,), sequential=True),
    Family("togdiv", "sequential", "a clock divider: a counter counts rising clock edges from 0 "
           "to {W1} and wraps; t toggles each time the counter wraps to 0; a synchronous rst "
           "clears both", (("rst", "1"),), (("t", "1", True),),
           "  reg [7:0] c;\n  always @(posedge clk)\n    if (rst) begin c <= 0; t <= 0; end\n"
           "    else if (c == {W1}) begin c <= 0; t <= ~t; end\n    else c <= c + 1'b1;",
           "if (rst) begin cnt = 0; exp_t = 0; end else if (cnt == {W1}) begin cnt = 0; "
           "exp_t = ~exp_t; end else cnt = cnt + 1;",
           ("  reg [7:0] c;\n  always @(posedge clk)\n    if (rst) begin c <= 0; t <= 0; end\n"
            "    else if (c == {W}) begin c <= 0; t <= ~t; end\n    else c <= c + 1'b1;",),
           (2, 3, 4, 5, 6, 8, 10), sequential=True),
)


def _ports(f: Family, w: int) -> list[Port]:
    ports = [Port("clk", "input")] if f.sequential else []
    ports += [Port(n, "input", _width(e, w)) for n, e in f.inputs]
    ports += [Port(n, "output", _width(e, w), reg=r) for n, e, r in f.outputs]
    return ports


def _module(top: str, ports: list[Port], body: str) -> str:
    return f"module {top}({', '.join(p.decl() for p in ports)});\n{body}\nendmodule\n"


def _tb_decls(f: Family, w: int) -> str:
    lines = []
    for n, e in f.inputs:
        lines.append(f"reg [{_width(e, w) - 1}:0] {n};")
    for n, e, _ in f.outputs:
        ww = _width(e, w)
        lines.append(f"wire [{ww - 1}:0] {n}; reg [{ww - 1}:0] exp_{n};")
    # model scratch: a loop index, a flag, and state for the sequential models
    lines.append("integer i, k, errors = 0; integer seed; reg hit; "
                 f"reg [{max(w, 8) - 1}:0] st, cnt; reg sp, sc;")
    return "\n".join(lines)


def _testbench(f: Family, w: int, top: str, seed: int) -> str:
    ports = _ports(f, w)
    conn = ", ".join(f".{p.name}({p.name})" for p in ports)
    ins = [n for n, _ in f.inputs]
    outs = [n for n, _, _ in f.outputs]
    mismatch = " || ".join(f"{o} !== exp_{o}" for o in outs)
    show = ", ".join(outs)
    fail = (f'begin errors = errors + 1; if (errors < 4) $display("FAIL at %0d: got %b", i, '
            f'{{{show}}}); end')
    model = _fill(f.model, w)
    if not f.sequential:
        drive = " ".join(f"{n} = (i == 0) ? 0 : (i == 1) ? ~0 : $random(seed);" for n in ins)
        loop = (f"  for (i = 0; i < {VECTORS}; i = i + 1) begin\n    {drive}\n    #1;\n"
                f"    {model}\n    if ({mismatch}) {fail}\n  end\n")
        head = ""
    else:
        drive = " ".join(
            f"{n} = (i < 2) ? 1 : ($random(seed) % 11 == 0);" if n == "rst" else
            f"{n} = $random(seed);" for n in ins)
        loop = (f"  for (i = 0; i < {VECTORS}; i = i + 1) begin\n    {drive}\n"
                f"    @(posedge clk); #1;\n    {model}\n"
                f"    if (i >= 1 && ({mismatch})) {fail}\n  end\n")
        head = "reg clk = 0;\nalways #5 clk = ~clk;\n"
    return ("`timescale 1ns/1ps\nmodule tb;\n" + head + _tb_decls(f, w) + "\n"
            f"{top} dut({conn});\ninitial begin\n  seed = {seed};\n" + loop +
            '  if (errors == 0) $display("PASS"); else $display("FAIL: %0d errors", errors);\n'
            "  $finish;\nend\nendmodule\n")


def _spec(f: Family, w: int, top: str, ports: list[Port], phrasing: int) -> str:
    behaviour = _fill(f.behaviour, w)
    iface = ", ".join(p.decl() for p in ports)
    clock = " All state changes on the rising edge of clk." if f.sequential else ""
    if phrasing == 0:
        return (f"Implement a {f.kind} Verilog module `{top}`. Interface: `{iface}`. "
                f"Behaviour: {behaviour}.{clock}")
    return f"Write {top} in Verilog: {behaviour}.{clock} Use exactly these ports: {iface}."


def verilog_tasks(seed: int = 0, phrasings: int = 2) -> list[VerilogTask]:
    """Every family at every width, ``phrasings`` wordings each (0 or 1 picked per task by the
    seed when ``phrasings`` is 1); mutants keep only those differing from the reference."""
    rng = random.Random(seed)
    tasks = []
    for f in FAMILIES:
        for w in f.widths:
            top = f"{f.name}_w{w}"
            ports = _ports(f, w)
            ref = _module(top, ports, _fill(f.body, w))
            tb = _testbench(f, w, top, seed=1 + rng.randrange(1 << 16))
            mutants = tuple(m for m in (_module(top, ports, _fill(b, w)) for b in f.mutants)
                            if m != ref)
            picks = range(2) if phrasings >= 2 else [rng.randrange(2)]
            for p in picks:
                tasks.append(VerilogTask(f"vlog-{top}-p{p}", f.name, top,
                                         _spec(f, w, top, ports, p), ref, tb, mutants))
    return tasks
