"""Licensed IC-design text that ships in Debian packages, beyond the knowledge base: HDL sources
and examples of yosys, Icarus Verilog and Verilator, ngspice's text notes, and the man pages of
the EDA helper tools. Each piece keeps its package, file and licence.

Debian's ngspice packages ship no example netlists, so SPICE text comes from the ngspice manual
in the knowledge base and from the notes listed here.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from leanstack.chipexpert import extract
from leanstack.chipexpert.chunking import clean
from leanstack.chipexpert.training.schema import TextRecord
from leanstack.errors import LeanstackError

MAX_CODE_LINES = 80  # lines per HDL piece, cut at module ends or blank lines
MAX_TEXT_WORDS = 250  # words per prose piece, cut at paragraphs
MAX_FILE_CHARS = 12_000  # of one HDL file (vendor cell libraries run to megabytes)


@dataclass(frozen=True)
class PackageFile:
    """A file of a Debian package: ``kind`` is ``hdl``, ``text`` (maybe gzipped) or ``man``."""

    path: Path
    package: str
    licence: str
    kind: str


def _glob(root: str, patterns: tuple[str, ...], package: str, licence: str) -> list[PackageFile]:
    base = Path(root)
    found = {p for pat in patterns for p in base.glob(pat) if p.is_file()}
    return [PackageFile(p, package, licence, "hdl") for p in sorted(found)]


def package_files() -> list[PackageFile]:
    """The installed files this module reads, in a fixed order (missing ones are skipped)."""
    files = _glob("/usr/share/yosys", ("**/*.v",), "yosys", "ISC")
    files += _glob("/usr/share/doc/iverilog/examples", ("*.v", "*.vl"), "iverilog",
                   "GPL-2.0-or-later")
    files += _glob("/usr/share/verilator/examples", ("**/*.v", "**/*.sv"), "verilator", "CC0-1.0")
    for name, package in (("ngspice-doc/ANALYSES.gz", "ngspice-doc"),
                          ("ngspice/FAQ.gz", "ngspice"), ("ngspice/README.optran", "ngspice")):
        files.append(PackageFile(Path("/usr/share/doc") / name, package, "BSD-3-Clause", "text"))
    man = Path("/usr/share/man/man1")
    for tool, package, licence in (
            ("yosys-abc", "yosys", "ISC"), ("yosys-filterlib", "yosys", "ISC"),
            ("yosys-smtbmc", "yosys", "ISC"), ("yosys-witness", "yosys", "ISC"),
            ("iverilog-vpi", "iverilog", "GPL-2.0-or-later"),
            ("verilator_coverage", "verilator", "LGPL-3.0-only OR Artistic-2.0"),
            ("verilator_gantt", "verilator", "LGPL-3.0-only OR Artistic-2.0"),
            ("verilator_profcfunc", "verilator", "LGPL-3.0-only OR Artistic-2.0")):
        files.append(PackageFile(man / f"{tool}.1.gz", package, licence, "man"))
    return [f for f in files if f.path.is_file()]


def heldout_ic_file() -> PackageFile:
    """The IC text kept out of training for domain perplexity: ngspice's device notes."""
    return PackageFile(Path("/usr/share/doc/ngspice-doc/DEVICES.gz"), "ngspice-doc",
                       "BSD-3-Clause", "text")


def read_text(path: Path) -> str:
    """A text file, gunzipped when it ends in .gz; a missing one is a one-line error."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise LeanstackError(f"{path}: cannot read ({e.strerror}); install its Debian package "
                             "with scripts/system-deps.sh") from e
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return data.decode("utf-8", errors="replace")


def code_pieces(text: str, max_lines: int = MAX_CODE_LINES) -> list[str]:
    """HDL cut into pieces of at most ``max_lines`` lines, preferably after ``endmodule`` or at
    a blank line."""
    pieces, cur = [], []
    for line in text.splitlines():
        cur.append(line.rstrip())
        at_end = line.strip().startswith("endmodule")
        if at_end and len(cur) >= max_lines // 4 or len(cur) >= max_lines or \
                (not line.strip() and len(cur) >= max_lines * 3 // 4):
            pieces.append("\n".join(cur).strip("\n"))
            cur = []
    if cur:
        pieces.append("\n".join(cur).strip("\n"))
    return [p for p in pieces if len(p.split()) >= 8]


def prose_pieces(text: str, max_words: int = MAX_TEXT_WORDS) -> list[str]:
    """Prose cut at paragraphs into pieces of at most about ``max_words`` words."""
    pieces, cur, n = [], [], 0
    for para in re.split(r"\n\s*\n", clean(text)):
        k = len(para.split())
        if cur and n + k > max_words:
            pieces.append("\n\n".join(cur))
            cur, n = [], 0
        if k:
            cur.append(para.strip())
            n += k
    if cur:
        pieces.append("\n\n".join(cur))
    return [p for p in pieces if len(p.split()) >= 8]


def _record(f: PackageFile, n: int, text: str) -> TextRecord:
    source = f"{f.package}:{f.path}"
    rid = "pkg-" + hashlib.sha256(f"{source}\0{n}\0{text}".encode()).hexdigest()[:16]
    return TextRecord(rid, text, source, f.licence)


def file_records(f: PackageFile) -> list[TextRecord]:
    """The pieces of one package file as CPT records."""
    if f.kind == "hdl":
        pieces = code_pieces(read_text(f.path)[:MAX_FILE_CHARS])
    elif f.kind == "man":
        pieces = prose_pieces("\n\n".join(f"{s.title}\n{s.text}"
                                          for s in extract.man_sections(f.path)))
    else:
        pieces = prose_pieces(read_text(f.path))
    return [_record(f, n, p) for n, p in enumerate(pieces)]


def package_records(files: list[PackageFile] | None = None) -> list[TextRecord]:
    """Every piece of every package file (default: ``package_files()``)."""
    return [r for f in (package_files() if files is None else files) for r in file_records(f)]


@dataclass(frozen=True)
class DocumentedCell:
    """An HDL module with the prose its file documents it with (yosys's ``//-`` blocks)."""

    name: str
    doc: str
    code: str
    source: str
    licence: str


def documented_cells(path: Path = Path("/usr/share/yosys/simcells.v")) -> list[DocumentedCell]:
    """The cells of yosys's gate-level library, each with its ``//-`` description (the
    signature line and truth tables left out) and its module text."""
    if not path.is_file():
        return []
    text = read_text(path)
    cells = []
    for m in re.finditer(r"((?://-[^\n]*\n)+)\s*(module\s+\\?(\$\w+)\b.*?endmodule)", text, re.S):
        lines = [ln[3:].strip() for ln in m.group(1).splitlines()]
        prose = []
        for ln in lines[1:]:  # lines[0..1] are blank and the signature
            if re.match(r"(Truth table|\$_)", ln) or "|" in ln:
                if prose:
                    break
                continue
            if ln:
                prose.append(ln)
        doc = " ".join(prose).strip()
        if doc:
            cells.append(DocumentedCell(m.group(3), doc, m.group(2), f"yosys:{path}", "ISC"))
    return cells
