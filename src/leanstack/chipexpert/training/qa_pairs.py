"""Question/answer pairs drawn from the knowledge base: a yosys command and what it does, a
command-line option and what it does, a manual section and its opening sentences. Each answer
is sentences of one chunk (so a grounded answer can cite it), and each pair remembers its
chunk and a neighbouring chunk (the next section of the same document) whose facts make a
plausible wrong answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from leanstack.chipexpert.chunking import Chunk, heading_paths
from leanstack.chipexpert.grounding import split_sentences

MAX_ANSWER_WORDS = 60
DOC_NAMES = {
    "ngspice-manual": "the ngspice manual", "yosys-manual": "the yosys manual",
    "yosys-slides": "the yosys presentation", "py-amaranth": "the Amaranth HDL documentation",
    "py-cocotb": "the cocotb documentation", "py-spicelib": "the spicelib documentation",
    "py-pyspice": "the PySpice documentation", "py-gdsfactory": "the gdsfactory documentation",
}
TOOLS = {"man-iverilog": "iverilog", "man-vvp": "vvp", "man-verilator": "verilator",
         "man-ngspice": "ngspice", "man-yosys": "yosys"}
COMMAND_QUESTIONS = ("What does the yosys command `{cmd}` do?", "What is the yosys pass `{cmd}` "
                     "for?", "In yosys, what does `{cmd}` do?")
OPTION_QUESTIONS = ("What does the option `{opt}` of {tool} do?", "In {tool}, what is `{opt}` "
                    "for?", "Explain the {tool} option `{opt}`.")
SECTION_QUESTIONS = ("What does {doc} say about \"{title}\"?", "Explain \"{title}\" as described "
                     "in {doc}.", "Summarise the part of {doc} on \"{title}\".")


@dataclass(frozen=True)
class QAPair:
    """A question, its answer (sentences of ``chunk``), the kind (``command`` or ``section``)
    and a neighbouring chunk for wrong answers (None when the document has no other section)."""

    question: str
    answer: str
    kind: str
    chunk: Chunk
    neighbour: Chunk | None


def answer_sentences(text: str, limit: int = 2, capital: bool = False) -> str:
    """The first ``limit`` prose sentences of ``text``, at most ``MAX_ANSWER_WORDS`` words;
    empty when there is none. Usage lines, option lists, code and docstring markup are left
    out, and with ``capital`` so are sentences not starting with a capital (a chunk cut
    mid-sentence begins with one)."""
    kept: list[str] = []
    for s in split_sentences(text):
        ws = s.split()
        if len(ws) < 5 or not re.search(r"[.!?]$", s) or (capital and not s[0].isupper()) or \
                re.search(r"[{};<>\[\]|=]|\s-\w|--|:\w+:`", s):
            continue
        if sum(len(x.split()) for x in kept) + len(ws) > MAX_ANSWER_WORDS:
            break
        kept.append(s)
        if len(kept) == limit:
            break
    return " ".join(kept)


def _first_chunks(chunks: list[Chunk]) -> dict[tuple[str, str], Chunk]:
    first: dict[tuple[str, str], Chunk] = {}
    for c in chunks:
        first.setdefault((c.source, c.section), c)
    return first


def _neighbours(first: dict[tuple[str, str], Chunk]) -> dict[tuple[str, str], Chunk]:
    """For each section, the first chunk of the next section of the same source (the last
    section takes the one before it)."""
    by_source: dict[str, list[Chunk]] = {}
    for c in first.values():
        by_source.setdefault(c.source, []).append(c)
    out = {}
    for seq in by_source.values():
        for i, c in enumerate(seq):
            if len(seq) > 1:
                out[(c.source, c.section)] = seq[i + 1] if i + 1 < len(seq) else seq[i - 1]
    return out


def command_pairs(chunks: list[Chunk], pick: int = 0) -> list[QAPair]:
    """Each yosys command: its one-line summary and first descriptive sentence."""
    first = _first_chunks([c for c in chunks if c.source == "yosys-help"])
    near = _neighbours(first)
    out = []
    for n, (key, c) in enumerate(first.items()):
        cmd, _, summary = c.section.partition(" -- ")
        if not summary:
            continue
        detail = answer_sentences(c.text, 1, capital=True)
        answer = f"`{cmd}`: {summary.strip().rstrip('.')}." + (f" {detail}" if detail else "")
        q = COMMAND_QUESTIONS[(n + pick) % len(COMMAND_QUESTIONS)].format(cmd=cmd)
        out.append(QAPair(q, answer, "command", c, near.get(key)))
    return out


_OPTION_HEAD = re.compile(r"^(-{1,2}[A-Za-z+][\w+-]*(?:[ =]?<?[\w.|-]*>?)?)")


def _options(text: str) -> list[tuple[str, str]]:
    """(option, description) pairs of a help or man-page text: a paragraph whose first line
    starts with ``-``; a short first line is the option itself, else its first word."""
    found = []
    for para in re.split(r"\n\s*\n", text):
        lines = [ln.strip() for ln in para.strip().splitlines() if ln.strip()]
        if not lines or not lines[0].startswith("-"):
            continue
        if len(lines) > 1 and len(lines[0].split()) <= 4:
            opt, desc = lines[0], " ".join(lines[1:])
        else:
            m = _OPTION_HEAD.match(lines[0])
            if not m:
                continue
            opt = m.group(1).strip()
            desc = " ".join([lines[0][m.end():].strip(), *lines[1:]]).strip()
        sentences = answer_sentences(desc, 2)
        if sentences and len(opt) <= 40:
            found.append((opt, sentences))
    return found


def option_pairs(chunks: list[Chunk], pick: int = 0) -> list[QAPair]:
    """Each command-line option of a yosys command or an EDA tool's man page with its
    description; the neighbour is the chunk of the next option-bearing section."""
    out = []
    for source in ("yosys-help", *TOOLS):
        part = [c for c in chunks if c.source == source]
        for i, c in enumerate(part):
            tool = TOOLS.get(source) or f"yosys `{c.section.partition(' -- ')[0]}`"
            nb = part[i + 1] if i + 1 < len(part) else (part[i - 1] if i else None)
            for j, (opt, desc) in enumerate(_options(c.text)):
                q = OPTION_QUESTIONS[(i + j + pick) % len(OPTION_QUESTIONS)].format(opt=opt,
                                                                                   tool=tool)
                out.append(QAPair(q, f"`{opt}`: {desc}", "command", c, nb))
    return out


def section_pairs(chunks: list[Chunk], pick: int = 0) -> list[QAPair]:
    """Each section of the manuals and package documentation: its opening sentences."""
    part = [c for c in chunks if c.source in DOC_NAMES]
    first = _first_chunks(part)
    near = _neighbours(first)
    paths = heading_paths(part)
    out = []
    for n, (key, c) in enumerate(first.items()):
        answer = answer_sentences(c.text, 2, capital=True)
        if not answer:
            continue
        title = re.sub(r"(^|> )[\d.]+\s+", r"\1", paths.get(key, c.section))
        q = SECTION_QUESTIONS[(n + pick) % len(SECTION_QUESTIONS)].format(
            doc=DOC_NAMES[c.source], title=title)
        out.append(QAPair(q, answer, "section", c, near.get(key)))
    return out


def all_pairs(chunks: list[Chunk], pick: int = 0) -> list[QAPair]:
    """Command, option and section pairs; ``pick`` rotates the question wordings."""
    return command_pairs(chunks, pick) + option_pairs(chunks, pick) + section_pairs(chunks, pick)
