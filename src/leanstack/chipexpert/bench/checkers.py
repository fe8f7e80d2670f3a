"""Score an answer to an item: MCQ letter, numeric within tolerance, Verilog by simulation and
synthesis, SPICE by ngspice ``.meas`` within limits, open answers by an automatic 0-1 proxy.

Every check returns a ``Check`` (score 0..1, passed, a short detail). Verilog and SPICE answers
are untrusted: they run in a temporary directory under ``sandbox.run_limited``, which lets the
tools write nothing outside it.
"""

from __future__ import annotations

import math
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from leanstack.chipexpert.bench.items import LETTERS, VERILOG_IDENTIFIER, Item
from leanstack.chipexpert.bench.sandbox import run_limited
from leanstack.errors import LeanstackError

SIM_TIMEOUT_S = 10.0
SYNTH_TIMEOUT_S = 30.0
# Verilog that reaches outside the simulation: system tasks on files or the shell, waveform
# dumps (vvp writes $dumpfile's path), includes, and token pasting (which could assemble one of
# these from pieces). Checked on the answer and on its preprocessed text; refused.
FORBIDDEN_VERILOG = re.compile(
    r"\$(?:system|f(?:open|close|write[bho]?|display[bho]?|strobe[bho]?|monitor[bho]?|scanf|"
    r"gets|getc|read|flush|seek|tell|rewind|error|eof)|s?readmem[bh]|writemem[bh]|dump\w*|"
    r"sdf_annotate|ungetc|fsdb\w*|vcdplus\w*)(?![\w$])"
    r"|`\s*(?:include|line)\b|``")
# The first module declaration: `module NAME` then a parameter list, port list or `;`.
_MODULE_DECL = re.compile(r"\bmodule\s+[A-Za-z_][\w$]*\s*(?:#\s*\(|\(|;)")
_MODULE_DECL_AT_LINE_START = re.compile(r"^[ \t]*module\s+[A-Za-z_][\w$]*\s*(?:#\s*\(|\(|;)",
                                        re.M)
# SPICE lines a candidate may not bring: the checker owns the analysis, output and includes.
DROPPED_SPICE = re.compile(r"^\s*\.(end\b|tran|ac\b|dc\b|op\b|noise|tf\b|pz\b|sens|four|meas|"
                           r"save|print|plot|probe|include|inc\b|lib\b|control|endc)", re.I)
PREFIX = {"f": 1e-15, "p": 1e-12, "n": 1e-9, "u": 1e-6, "µ": 1e-6, "μ": 1e-6, "m": 1e-3,
          "c": 1e-2, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
UNIT_ALIASES = {"Ω": ("Ω", "ohms", "ohm", "Ohms", "Ohm"), "%": ("%", "percent")}
NUMBER = r"[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?"
_NUMBER_RE = re.compile(rf"(?<![\w.])({NUMBER})(?:\s*[x×*]\s*10\^?\s*([-+−]?\d+))?")
_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class Check:
    """The outcome of checking one answer."""

    score: float
    passed: bool
    detail: str


def _pass(detail: str = "ok") -> Check:
    return Check(1.0, True, detail)


def _fail(detail: str) -> Check:
    return Check(0.0, False, detail)


# ---------- MCQ ----------

def parse_letter(text: str) -> str | None:
    """The choice letter an answer commits to ("Answer: B", "(C)", "D." at the start...)."""
    for pattern in (r"answer\s*(?:is|:)?\s*\(?([A-D])\b", r"^\s*\(?([A-D])[).:\s]",
                    r"^\s*([A-D])\s*$", r"\(([A-D])\)", r"\b([A-D])\)"):
        m = re.search(pattern, text, re.I | re.M if "answer" in pattern else re.M)
        if m:
            return m.group(1).upper()
    return None


def check_mcq(item: Item, answer: str) -> Check:
    """A letter (or text containing one) against the item's letter."""
    letter = answer.strip().upper() if answer.strip().upper() in LETTERS else parse_letter(answer)
    if letter is None:
        return _fail("no choice letter found")
    return _pass(letter) if letter == item.answer else _fail(f"chose {letter}, key {item.answer}")


# ---------- numeric ----------

def _units(unit: str) -> tuple[str, ...]:
    return UNIT_ALIASES.get(unit, (unit,)) if unit else ()


def parse_quantities(text: str, unit: str = "") -> list[tuple[float, bool]]:
    """Every number in ``text`` in base units, with whether ``unit`` followed it: "2.2 kΩ",
    "15 mA", "3.3e-9", "1.5 × 10^3 Hz", "0.5 m" (metre when the unit is m), "1,200"."""
    found = []
    for m in _NUMBER_RE.finditer(text):
        raw = m.group(1).replace(",", "").replace("−", "-")
        if not any(ch.isdigit() for ch in raw):
            continue
        try:
            value = float(raw)
        except ValueError:
            continue
        if m.group(2):
            value *= 10.0 ** int(m.group(2).replace("−", "-"))
        rest = text[m.end():].lstrip()
        value, has_unit = _apply_suffix(value, rest, unit)
        found.append((value, has_unit))
    return found


def _apply_suffix(value: float, rest: str, unit: str) -> tuple[float, bool]:
    """Scale by an SI prefix in front of ``unit`` (or alone, as in "2.2k")."""
    def ends_word(s: str) -> bool:
        return not s or not s[0].isalpha()

    for u in _units(unit):
        if rest.startswith(u) and ends_word(rest[len(u):]):
            return value, True
    if rest and rest[0] in PREFIX:
        after = rest[1:]
        for u in _units(unit):
            if after.startswith(u) and ends_word(after[len(u):]):
                return value * PREFIX[rest[0]], True
        if ends_word(after) and unit not in ("dB", "dBm", "dBi"):
            return value * PREFIX[rest[0]], False
    return value, False


def answer_value(text: str, unit: str) -> float | None:
    """The number an answer gives: after its last "Answer:" if any, preferring numbers that
    carry the unit, and the last such number."""
    tail = re.split(r"answer\s*[:=]", text, flags=re.I)[-1]
    values = parse_quantities(tail, unit) or parse_quantities(text, unit)
    if not values:
        return None
    with_unit = [v for v, has in values if has]
    return (with_unit or [v for v, _ in values])[-1]


def within(value: float, target: float, tolerance: dict[str, float]) -> bool:
    """True when ``value`` is within the absolute or relative tolerance of ``target``."""
    err = abs(value - target)
    return err <= tolerance.get("abs", 0.0) or err <= tolerance.get("rel", 0.0) * abs(target)


def check_numeric(item: Item, answer: str) -> Check:
    """The answer's number (unit prefixes understood) within the item's tolerance."""
    target = answer_value(item.answer, item.unit)
    if target is None:
        raise LeanstackError(f"item {item.id}: its answer {item.answer!r} holds no number; fix "
                             "the item")
    value = answer_value(answer, item.unit)
    if value is None or math.isnan(value):
        return _fail("no number found")
    if within(value, target, item.tolerance):
        return _pass(f"{value:g}")
    return _fail(f"{value:g} vs {target:g} {item.unit}".rstrip())


# ---------- code extraction ----------

def extract_block(text: str, languages: Sequence[str]) -> str | None:
    """The first fenced code block tagged with one of ``languages`` (or untagged)."""
    blocks = re.findall(r"```([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", text, re.S)
    for lang, body in blocks:
        if lang.lower() in languages:
            return body
    for lang, body in blocks:
        if not lang:
            return body
    return None


def extract_verilog(text: str) -> str | None:
    """Verilog from an answer (a ```verilog block, else the whole text): from the first module
    declaration (``module NAME (`` / ``#(`` / ``;``, preferring one that starts a line) to the
    last ``endmodule``. Prose that merely says "module" is not a declaration."""
    body = extract_block(text, ("verilog", "systemverilog", "sv", "v"))
    source = body if body is not None else text
    start = _MODULE_DECL_AT_LINE_START.search(source) or _MODULE_DECL.search(source)
    if start is None:
        return None
    end = source.rfind("endmodule")
    if end < start.start():
        return None
    return source[start.start():end + len("endmodule")] + "\n"


def extract_netlist(text: str) -> str:
    """SPICE lines from an answer (a ```spice block, else the whole text), without analysis,
    output, include and .end lines, which the checker supplies."""
    body = extract_block(text, ("spice", "netlist", "cir", "ngspice")) or text
    kept, in_control = [], False
    for line in body.splitlines():
        low = line.strip().lower()
        if low.startswith(".control"):
            in_control = True
        if in_control:
            in_control = not low.startswith(".endc")
            continue
        if not DROPPED_SPICE.match(line):
            kept.append(line)
    return "\n".join(kept)


# ---------- Verilog ----------

def check_verilog(item: Item, answer: str, timeout_s: float = SIM_TIMEOUT_S) -> Check:
    """Simulate the answer against the item's self-checking testbench (iverilog -g2012, vvp;
    pass = prints PASS and no FAIL), then synthesise it with yosys (``synth -top``)."""
    code = extract_verilog(answer)
    if code is None:
        return _fail("no Verilog module found")
    if m := FORBIDDEN_VERILOG.search(code):
        return _fail(f"uses {m.group(0)}, which the checker does not allow")
    top = item.checker["top"]
    if not VERILOG_IDENTIFIER.fullmatch(top):
        raise LeanstackError(f"item {item.id}: checker.top {top!r} is not a Verilog identifier; "
                             "fix the item")
    with tempfile.TemporaryDirectory(prefix="chipbench-v-") as tmp:
        d = Path(tmp)
        (d / "design.v").write_text(code)
        (d / "tb.v").write_text(item.checker["testbench"])
        pre = run_limited(["iverilog", "-g2012", "-E", "-o", "design.pre.v", "design.v"], d,
                          timeout_s)
        if pre.ok and (m := FORBIDDEN_VERILOG.search((d / "design.pre.v").read_text())):
            return _fail(f"uses {m.group(0)} (after macro expansion), which the checker does "
                         "not allow")
        comp = run_limited(["iverilog", "-g2012", "-o", "sim.vvp", "-s", "tb", "tb.v",
                            "design.v"], d, timeout_s)
        if not comp.ok:
            return _fail("does not compile: " + _first_line(comp.stderr or comp.stdout))
        sim = run_limited(["vvp", "-n", "sim.vvp"], d, timeout_s)
        if sim.timed_out:
            return _fail(f"simulation killed after {timeout_s:g} s")
        if "FAIL" in sim.stdout or "PASS" not in sim.stdout:
            fail = next((ln for ln in sim.stdout.splitlines() if "FAIL" in ln), "no PASS")
            return _fail("testbench: " + fail.strip()[:200])
        syn = run_limited(["yosys", "-q", "-p", f"read_verilog -sv design.v; synth -top {top}"],
                          d, SYNTH_TIMEOUT_S)
        if not syn.ok:
            why = "timed out" if syn.timed_out else _first_line(syn.stderr or syn.stdout)
            return _fail("yosys synth failed: " + why)
    return _pass("simulation PASS, synthesis ok")


# ---------- SPICE ----------

_MEAS = re.compile(r"^(\w+)\s+=\s+([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)", re.M)


def spice_deck(item: Item, netlist: str) -> str:
    """The deck ngspice runs: title, the item's harness, the candidate, analysis, .end."""
    return "\n".join(["* chipbench " + item.id, item.checker.get("harness", ""), netlist,
                      ".save all", item.checker["analysis"], ".end", ""])


def measurements(output: str) -> dict[str, float]:
    """``name = value`` lines that ngspice prints for successful ``.meas`` statements."""
    return {m.group(1).lower(): float(m.group(2)) for m in _MEAS.finditer(output)}


def check_spice(item: Item, answer: str, timeout_s: float = SIM_TIMEOUT_S) -> Check:
    """Run the answer's netlist in ngspice batch mode; every ``.meas`` must land in its limits."""
    netlist = extract_netlist(answer)
    if not netlist.strip():
        return _fail("no netlist found")
    with tempfile.TemporaryDirectory(prefix="chipbench-s-") as tmp:
        d = Path(tmp)
        (d / "deck.cir").write_text(spice_deck(item, netlist))
        run = run_limited(["ngspice", "-b", "deck.cir"], d, timeout_s)
    if run.timed_out:
        return _fail(f"ngspice killed after {timeout_s:g} s")
    got = measurements(run.stdout)
    for name, (low, high) in item.checker["limits"].items():
        value = got.get(name.lower())
        if value is None:
            err = next((ln for ln in (run.stderr + run.stdout).splitlines()
                        if "error" in ln.lower()), "")
            return _fail(f"measurement {name} missing" + (f" ({err.strip()[:150]})" if err
                                                          else ""))
        if not low <= value <= high:
            return _fail(f"{name} = {value:.4g} outside [{low:g}, {high:g}]")
    return _pass(", ".join(f"{n} = {got[n.lower()]:.4g}" for n in item.checker["limits"]))


# ---------- open answers ----------

def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def _has_word(word: str, words: set[str]) -> bool:
    """``word`` is in ``words``; words of 3+ letters also match as a prefix ("oscillat",
    "glitch" -> "glitches"), a light stand-in for stemming."""
    return word in words or (len(word) >= 3 and any(w.startswith(word) for w in words))


def fact_covered(fact: str, words: set[str]) -> bool:
    """A key fact is covered when all words of one of its ' | '-separated variants appear."""
    return any(all(_has_word(w, words) for w in _words(variant))
               for variant in fact.split("|") if _words(variant))


def fact_coverage(facts: list[str], answer: str) -> float:
    """Fraction of ``facts`` an answer covers."""
    if not facts:
        return 0.0
    words = _words(answer)
    return sum(fact_covered(f, words) for f in facts) / len(facts)


class OpenScorer:
    """The automatic 0-1 proxy for open answers: half the cosine similarity to the reference
    answer (all-MiniLM-L6-v2, clipped at 0), half the key-fact coverage."""

    def __init__(self, embed: Callable[[list[str]], list[list[float]]] | None = None) -> None:
        self._embed = embed

    def _vectors(self, texts: list[str]) -> list[list[float]]:
        if self._embed is None:
            from leanstack.chipexpert.dense import embed, load_model

            model = load_model()
            self._embed = lambda batch: embed(model, batch).tolist()
        return self._embed(texts)

    def similarity(self, answer: str, reference: str) -> float:
        """Cosine similarity of the two texts' embeddings."""
        a, b = self._vectors([answer, reference])
        dot = sum(x * y for x, y in zip(a, b, strict=True))
        norm = math.sqrt(sum(x * x for x in a) * sum(y * y for y in b)) or 1.0
        return dot / norm

    def check(self, item: Item, answer: str) -> Check:
        """Score an open answer; passed means a proxy score of at least 0.5."""
        if not answer.strip():
            return _fail("empty answer")
        sim = max(0.0, self.similarity(answer, item.answer))
        cov = fact_coverage(item.key_facts, answer)
        score = 0.5 * sim + 0.5 * cov
        return Check(round(score, 4), score >= 0.5, f"similarity {sim:.2f}, facts {cov:.2f}")


# ---------- dispatch ----------

def check_answer(item: Item, answer: str, scorer: OpenScorer | None = None) -> Check:
    """Score ``answer`` to ``item`` with the checker of its type."""
    if item.type == "mcq":
        return check_mcq(item, answer)
    if item.type == "numeric":
        return check_numeric(item, answer)
    if item.type == "verilog":
        return check_verilog(item, answer)
    if item.type == "spice":
        return check_spice(item, answer)
    return (scorer or OpenScorer()).check(item, answer)


def check_many(pairs: Sequence[tuple[Item, str]], workers: int = 4) -> list[Check]:
    """Check executable answers in parallel (each check is a few short subprocesses)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: check_answer(*p), pairs))


def tools_missing() -> list[str]:
    """The simulators, the synthesiser and the sandbox tool the executable checkers need that
    are not on PATH."""
    return [t for t in ("iverilog", "vvp", "yosys", "ngspice", "unshare")
            if shutil.which(t) is None]


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errs = [ln for ln in lines if "error" in ln.lower()]
    return ((errs or lines or ["(no output)"])[0])[:200]
