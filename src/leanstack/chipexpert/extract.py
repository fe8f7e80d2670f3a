"""Turn documentation files into ``Section``s (a heading and its text), one format per function.

Every extractor raises ``LeanstackError`` when its input cannot be read, so a caller can report the
file and go on with the next one.
"""

from __future__ import annotations

import ast
import gzip
import re
import subprocess
import zlib
from collections import Counter
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from leanstack.errors import LeanstackError

GROFF_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Section:
    """One titled piece of a document, before chunking."""

    title: str
    text: str


def _run(cmd: list[str], what: str, timeout: float = 120) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, errors="replace")
    except FileNotFoundError as e:
        raise LeanstackError(f"{what}: '{cmd[0]}' is not installed; "
                             "run scripts/system-deps.sh") from e
    except subprocess.TimeoutExpired as e:
        raise LeanstackError(f"{what}: '{cmd[0]}' ran over {timeout:g} s; check the file") from e
    if out.returncode != 0:
        first = (out.stderr.strip().splitlines() or ["no message"])[0]
        raise LeanstackError(f"{what}: '{cmd[0]}' failed ({first}); check the file is not damaged")
    return out.stdout


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
        return gzip.decompress(data) if path.suffix == ".gz" else data
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise LeanstackError(f"{path}: cannot read ({e}); reinstall its package or drop it") from e


# --- HTML (the ngspice manual) ---------------------------------------------------------------

class _HeadingSplitter(HTMLParser):
    """Collects text per <h1>..<h4> heading; drops scripts, styles and the table of contents."""

    _BLOCK = {"p", "div", "br", "li", "tr", "pre", "table", "dd", "dt", "h1", "h2", "h3", "h4",
              "h5"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: list[tuple[str, list[str]]] = []
        self._heading: list[str] | None = None
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in ("h1", "h2", "h3", "h4"):
            self._heading = []
        elif tag in self._BLOCK and self.sections:
            self.sections[-1][1].append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip = max(0, self._skip - 1)
        elif tag in ("h1", "h2", "h3", "h4") and self._heading is not None:
            title = " ".join("".join(self._heading).split())
            self.sections.append((title, []))
            self._heading = None
        elif tag in self._BLOCK and self.sections:
            self.sections[-1][1].append("\n")

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._heading is not None:
            self._heading.append(data)
        elif self.sections:
            self.sections[-1][1].append(data)


def html_sections(path: Path) -> list[Section]:
    """Split an HTML manual at its h1-h4 headings."""
    raw = _read_bytes(path).decode("utf-8", errors="replace")
    if "<h" not in raw.lower():
        raise LeanstackError(f"{path}: no HTML headings found; is this the HTML manual?")
    parser = _HeadingSplitter()
    parser.feed(raw)
    return [Section(t, "".join(parts)) for t, parts in parser.sections
            if t and t.lower() not in ("table of contents", "contents")]


# --- PDF (the yosys manual and slides) -------------------------------------------------------

_CHAPTER_LINE = re.compile(r"^\s*((?:Chapter|Appendix) [A-Z0-9]+)\s*$")
_TOC_LINE = re.compile(r"^\s*([A-Z0-9]+(?:\.[0-9]+)*)\s+(\S.*?)\s*(?:\.\s*){3,}\s*(\d+)\s*$")


def _pdftotext(path: Path, layout: bool) -> str:
    if not path.is_file():
        raise LeanstackError(f"{path}: file not found; install its Debian package")
    args = ["pdftotext", "-enc", "UTF-8"] + (["-layout"] if layout else []) + [str(path), "-"]
    return _run(args, str(path))


def pdf_manual_sections(path: Path, skip: tuple[str, ...] = ()) -> list[Section]:
    """Split a PDF manual at the numbered headings listed in its table of contents, and at
    "Chapter N" / "Appendix X" pages; sections whose title starts with a prefix in ``skip``
    (e.g. ``"C."``) are left out, and so is the bibliography."""
    lines = _pdftotext(path, layout=True).splitlines()
    toc = [(m[1], " ".join(m[2].split())) for line in lines if (m := _TOC_LINE.match(line))]
    if not toc:
        raise LeanstackError(f"{path}: no table of contents found; is this a numbered manual?")
    last_toc_line = max(i for i, line in enumerate(lines) if _TOC_LINE.match(line))
    body = lines[last_toc_line + 1:]
    starts: list[tuple[int, str]] = []
    pos = 0
    for number, title in toc:
        head = re.compile(r"^\s*" + re.escape(number) + r"\s+" + re.escape(title.split()[0]))
        for i in range(pos, len(body)):
            if head.match(body[i]):
                starts.append((i, f"{number} {title}"))
                pos = i + 1
                break
    for i, line in enumerate(body):  # chapter openings: "Chapter 3" then its name
        if m := _CHAPTER_LINE.match(line):
            name = next((b.strip() for b in body[i + 1:i + 6] if b.strip()), "")
            starts.append((i + 1, f"{m[1]} {name}".strip()))
        elif line.strip() == "Bibliography":
            starts.append((i, "Bibliography"))
    starts.sort()
    sections = []
    for (i, title), nxt in zip(starts, [s for s, _ in starts[1:]] + [len(body)], strict=True):
        if not title.startswith((*skip, "Bibliography")):
            sections.append(Section(title, "\n".join(body[i + 1:nxt])))
    return sections


def pdf_slide_sections(path: Path) -> list[Section]:
    """One section per run of slides sharing a title (the first line of each page)."""
    pages = [[ln.strip() for ln in page.splitlines() if ln.strip()]
             for page in _pdftotext(path, layout=False).split("\f")]
    # footer lines (author, title, date) repeat on most slides; page counters look like "7 / 150"
    counts = Counter(ln for lines in pages for ln in set(lines))
    footer = {ln for ln, n in counts.items() if n > len(pages) / 2}
    sections: list[Section] = []
    for page in pages:
        lines = [ln for ln in page if ln not in footer and not re.fullmatch(r"\d+ / \d+", ln)]
        if len(lines) < 2:
            continue
        title, text = lines[0], "\n".join(lines[1:])
        if sections and sections[-1].title == title:
            sections[-1] = Section(title, sections[-1].text + "\n\n" + text)
        else:
            sections.append(Section(title, text))
    if not sections:
        raise LeanstackError(f"{path}: no text in this PDF; is it scanned images only?")
    return sections


# --- man pages -------------------------------------------------------------------------------

def man_sections(path: Path) -> list[Section]:
    """Render a man page with groff and split it at its section headings (NAME, OPTIONS, ...)."""
    source = _read_bytes(path)
    if not source.lstrip().startswith((b".", b"'", b"\\")):
        raise LeanstackError(f"{path}: not a roff man page; pass a .1 or .1.gz file")
    try:
        out = subprocess.run(["groff", "-man", "-Tutf8", "-P", "-cbou", "-rLL=100n", "-rHY=0"],
                             input=source, capture_output=True, timeout=GROFF_TIMEOUT_S)
    except FileNotFoundError as e:
        raise LeanstackError("groff is not installed; run scripts/system-deps.sh") from e
    except subprocess.TimeoutExpired as e:
        raise LeanstackError(f"{path}: groff ran over {GROFF_TIMEOUT_S:g} s; check the man page "
                             "is not damaged") from e
    text = out.stdout.decode("utf-8", errors="replace")
    sections: list[Section] = []
    for line in text.splitlines():
        if re.match(r"^[A-Z][A-Z0-9 /&-]+$", line.strip()) and not line.startswith(" "):
            sections.append(Section(line.strip().title(), ""))
        elif sections:
            sections[-1] = Section(sections[-1].title, sections[-1].text + line + "\n")
    if not sections:
        raise LeanstackError(f"{path}: groff produced no sections; is the man page damaged?")
    return sections


# --- yosys per-command help ------------------------------------------------------------------

_YOSYS_HEAD = re.compile(r"^(\S+)\s+--\s+(.+)\n=+\n", re.M)


def yosys_help_sections(yosys: str = "yosys", commands: list[str] | None = None) -> list[Section]:
    """One section per yosys command, from ``yosys -p 'help -all'``; ``commands`` picks a subset."""
    text = _run([yosys, "-Q", "-p", "help -all"], "yosys help")
    heads = list(_YOSYS_HEAD.finditer(text))
    if not heads:
        raise LeanstackError("yosys 'help -all' printed no command help; check the yosys install")
    sections = []
    for m, nxt in zip(heads, heads[1:] + [None], strict=True):
        if commands is not None and m[1] not in commands:
            continue
        end = nxt.start() if nxt else len(text)
        body = text[m.end():end].split("\nEnd of script.")[0]
        sections.append(Section(f"{m[1]} -- {m[2].strip()}", body))
    return sections


# --- Python docstrings -----------------------------------------------------------------------

def python_docstring_sections(package_dir: Path, package: str) -> list[Section]:
    """Docstrings of public modules, classes and functions, read with ``ast`` (nothing imported)."""
    sections = []
    for file in sorted(package_dir.rglob("*.py")):
        rel = file.relative_to(package_dir).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        if any(p.startswith("_") for p in parts) or "test" in "/".join(parts).lower():
            continue
        module = ".".join([package, *parts])
        try:
            tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
        except (OSError, SyntaxError, UnicodeDecodeError) as e:
            raise LeanstackError(f"{file}: cannot parse ({e}); reinstall {package}") from e
        sections.extend(_docstrings(tree, module))
    return sections


def _docstrings(tree: ast.Module, module: str) -> list[Section]:
    found = []
    if doc := ast.get_docstring(tree):
        found.append(Section(module, doc))
    for node in tree.body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            if node.name.startswith("_"):
                continue
            if doc := ast.get_docstring(node):
                found.append(Section(f"{module}.{node.name}", doc))
            if isinstance(node, ast.ClassDef):
                for sub in node.body:
                    if (isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef)
                            and not sub.name.startswith("_") and (doc := ast.get_docstring(sub))):
                        found.append(Section(f"{module}.{node.name}.{sub.name}", doc))
    return found


# --- plain text / Markdown -------------------------------------------------------------------

def text_sections(path: Path) -> list[Section]:
    """A plain-text or Markdown file, split at Markdown headings (or kept whole)."""
    try:
        text = _read_bytes(path).decode("utf-8")
    except UnicodeDecodeError as e:
        raise LeanstackError(f"{path}: not UTF-8 text ({e}); convert it or drop it") from e
    sections = [Section(path.stem, "")]
    for line in text.splitlines():
        if m := re.match(r"^#{1,4}\s+(.+)$", line):
            sections.append(Section(m[1].strip(), ""))
        else:
            sections[-1] = Section(sections[-1].title, sections[-1].text + line + "\n")
    return [s for s in sections if s.text.strip()]
