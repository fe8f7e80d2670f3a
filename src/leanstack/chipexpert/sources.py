"""The documents the knowledge base is built from: where each lives, its licence, how to read it.

``default_sources()`` lists the offline Debian documentation and the docstrings of installed
hardware Python packages; ``file_source()`` wraps any extra file a user adds.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from leanstack.chipexpert import extract
from leanstack.chipexpert.extract import Section
from leanstack.errors import LeanstackError

# Bump when an extractor changes its output, so cached sources are re-read.
EXTRACTOR_VERSION = "4"

DEBIAN_DOC = Path("/usr/share/doc")
MAN1 = Path("/usr/share/man/man1")

# Python packages whose docstrings describe hardware design, with their import names.
HARDWARE_PACKAGES = {"amaranth": "amaranth", "cocotb": "cocotb", "spicelib": "spicelib",
                     "PySpice": "PySpice", "gdsfactory": "gdsfactory"}


@dataclass(frozen=True)
class Source:
    """A named document: ``read()`` gives its sections, ``fingerprint()`` changes when it does."""

    name: str
    license: str
    origin: str
    read: Callable[[], list[Section]] = field(compare=False)
    inputs: tuple[Path, ...] = ()
    version_cmd: tuple[str, ...] = ()

    def fingerprint(self) -> str:
        """A hash of the input files (or tool version) and the extractor version."""
        h = hashlib.sha256(f"{self.name}|{EXTRACTOR_VERSION}|{self.origin}".encode())
        for path in self.inputs:
            try:
                h.update(path.read_bytes())
            except OSError as e:
                raise LeanstackError(f"{self.name}: cannot read {path} ({e.strerror}); "
                                     "install its Debian package or fix the path") from e
        if self.version_cmd:
            try:
                out = subprocess.run(list(self.version_cmd), capture_output=True, timeout=30)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise LeanstackError(f"{self.name}: '{self.version_cmd[0]}' does not run ({e}); "
                                     "run scripts/system-deps.sh") from e
            h.update(out.stdout)
        return h.hexdigest()


def ngspice_manual(path: Path = DEBIAN_DOC / "ngspice-doc/html/manual.html") -> Source:
    """The ngspice 39 user's manual (HTML, Debian ngspice-doc)."""
    return Source("ngspice-manual", "BSD-3-Clause AND CC-BY-SA-4.0 AND public-domain",
                  "Debian ngspice-doc: ngspice User's Manual (HTML)",
                  lambda: extract.html_sections(path), (path,))


def yosys_manual(path: Path = DEBIAN_DOC / "yosys/manual.pdf") -> Source:
    """The yosys manual (PDF, Debian yosys-doc), without its command reference (appendix C: the
    ``yosys-help`` text again, with listing line numbers in it) and its application notes
    (appendix E: two-column pages whose columns pdftotext interleaves into garbled text)."""
    return Source("yosys-manual", "ISC", "Debian yosys-doc: Yosys Manual (PDF)",
                  lambda: extract.pdf_manual_sections(path, skip=("C.", "Appendix E")), (path,))


def yosys_slides(path: Path = DEBIAN_DOC / "yosys/presentation.pdf") -> Source:
    """The yosys presentation slides (PDF, Debian yosys-doc)."""
    return Source("yosys-slides", "ISC", "Debian yosys-doc: Yosys presentation (PDF)",
                  lambda: extract.pdf_slide_sections(path), (path,))


def yosys_help(commands: list[str] | None = None) -> Source:
    """Per-command help of the installed yosys (``help -all``); ``commands`` picks a subset."""
    yosys = shutil.which("yosys") or "yosys"
    picked = "all" if commands is None else ",".join(sorted(commands))
    return Source("yosys-help", "ISC", f"yosys 'help <command>' output ({picked})",
                  lambda: extract.yosys_help_sections(yosys, commands),
                  version_cmd=(yosys, "-V"))


def man_page(tool: str, license: str, path: Path | None = None) -> Source:
    """The section-1 man page of ``tool``."""
    page = path or MAN1 / f"{tool}.1.gz"
    return Source(f"man-{tool}", license, f"man page {tool}(1)",
                  lambda: extract.man_sections(page), (page,))


def python_package(dist: str, module: str) -> Source | None:
    """Docstrings of an installed Python package, or None when it is not installed."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    try:
        meta = importlib.metadata.metadata(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
    license = meta.get("License-Expression") or meta.get("License") or "see package metadata"
    version = meta.get("Version", "?")
    return Source(f"py-{module.lower()}", license.splitlines()[0][:80],
                  f"docstrings of {dist} {version}",
                  lambda: extract.python_docstring_sections(root, module),
                  tuple(sorted(root.rglob("*.py"))))


def _pdf_any(path: Path) -> list[Section]:
    """A PDF manual with a numbered table of contents, or else a slide deck."""
    try:
        return extract.pdf_manual_sections(path)
    except LeanstackError as e:
        if "table of contents" not in str(e):
            raise
        return extract.pdf_slide_sections(path)


def file_source(path: Path, license: str = "unknown") -> Source:
    """Any extra file: .html/.htm, .pdf (manual with numbered contents, else slides),
    man pages (.1 .. .9, optionally .gz), or UTF-8 text/Markdown."""
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    kind = suffixes[-1] if suffixes else ""
    if kind in (".html", ".htm"):
        reader = extract.html_sections
    elif kind == ".pdf":
        reader = _pdf_any
    elif kind[1:].isdigit():
        reader = extract.man_sections
    else:
        reader = extract.text_sections
    return Source(f"file-{path.name}", license, f"file {path.name}", partial(reader, path),
                  (path,))


def default_sources() -> list[Source]:
    """The knowledge base the spec lists, in priority order (earlier wins on duplicates)."""
    sources = [
        yosys_help(),
        ngspice_manual(),
        yosys_manual(),
        yosys_slides(),
        man_page("iverilog", "GPL-2.0-or-later"),
        man_page("vvp", "GPL-2.0-or-later"),
        man_page("verilator", "LGPL-3.0-only OR Artistic-2.0"),
        man_page("ngspice", "BSD-3-Clause"),
        man_page("yosys", "ISC"),
    ]
    for dist, module in HARDWARE_PACKAGES.items():
        if (src := python_package(dist, module)) is not None:
            sources.append(src)
    return sources
