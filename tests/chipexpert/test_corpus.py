"""Corpus building on real sources: metadata, chunking, incremental skip, broken files."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest
from tests._require import require

from leanstack.chipexpert import sources
from leanstack.chipexpert.chunking import MAX_WORDS, MIN_WORDS
from leanstack.chipexpert.corpus import build_corpus, load_corpus
from leanstack.errors import LeanstackError

from .conftest import require_docs, small_sources


def test_chunks_carry_source_section_and_licence(tmp_path: Path) -> None:
    report = build_corpus(tmp_path, small_sources())
    assert [s.status for s in report.sources] == ["built", "built", "built"]
    records = [json.loads(line) for line in (tmp_path / "corpus.jsonl").read_text().splitlines()]
    assert len(records) == report.chunks > 20
    for r in records:
        assert set(r) == {"id", "source", "section", "text", "license"}
        assert all(r.values())
        assert len(r["text"].split()) <= MAX_WORDS + 3 * MIN_WORDS
    by_source = {r["source"]: r["license"] for r in records}
    assert by_source == {"yosys-help": "ISC", "man-iverilog": "GPL-2.0-or-later",
                         "man-vvp": "GPL-2.0-or-later"}
    sections = {(r["source"], r["section"]) for r in records}
    assert ("yosys-help", "opt_clean -- remove unused cells and wires") in sections
    assert ("man-iverilog", "Options") in sections
    assert len({r["id"] for r in records}) == len(records)
    # the section text is really the command's help, not a neighbour's
    opt_clean = next(r for r in records if r["section"].startswith("opt_clean "))
    assert "-purge" in opt_clean["text"] and "stat " not in opt_clean["text"]


class CountingSource:
    """Wraps a Source and counts how often it is read."""

    def __init__(self, src: sources.Source) -> None:
        self.reads = 0
        self.src = src

    def source(self) -> sources.Source:
        def read():
            self.reads += 1
            return self.src.read()

        s = self.src
        return sources.Source(s.name, s.license, s.origin, read, s.inputs, s.version_cmd)


def test_rebuild_skips_unchanged_sources_and_rereads_changed_ones(tmp_path: Path) -> None:
    require_docs()
    page = tmp_path / "vvp.1.gz"
    page.write_bytes((sources.MAN1 / "vvp.1.gz").read_bytes())
    iverilog = CountingSource(sources.man_page("iverilog", "GPL-2.0-or-later"))
    vvp = CountingSource(sources.man_page("vvp", "GPL-2.0-or-later", page))
    out = tmp_path / "kb"
    build_corpus(out, [iverilog.source(), vvp.source()])
    first = load_corpus(out)
    again = build_corpus(out, [iverilog.source(), vvp.source()])
    assert [s.status for s in again.sources] == ["unchanged", "unchanged"]
    assert (iverilog.reads, vvp.reads) == (1, 1)
    assert load_corpus(out) == first
    # edit one source: only it is read again, and its new text is in the corpus
    text = gzip.decompress(page.read_bytes()).replace(b"to be unbuffered",
                                                      b"to be written at once")
    page.write_bytes(gzip.compress(text))
    third = build_corpus(out, [iverilog.source(), vvp.source()])
    assert [s.status for s in third.sources] == ["unchanged", "built"]
    assert (iverilog.reads, vvp.reads) == (1, 2)
    assert any("to be written at once" in c.text for c in load_corpus(out))
    # --force reads everything again
    build_corpus(out, [iverilog.source(), vvp.source()], force=True)
    assert (iverilog.reads, vvp.reads) == (2, 3)
    # building a subset keeps the other source's cache for the next full build
    build_corpus(out, [vvp.source()])
    assert {c.source for c in load_corpus(out)} == {"man-vvp"}
    last = build_corpus(out, [iverilog.source(), vvp.source()])
    assert [s.status for s in last.sources] == ["unchanged", "unchanged"]
    assert (iverilog.reads, vvp.reads) == (2, 3)
    assert not list(out.rglob("*.tmp")), "temp files left behind"


def test_broken_files_are_reported_and_skipped(tmp_path: Path) -> None:
    require_docs()
    bad_pdf = tmp_path / "broken.pdf"
    bad_pdf.write_bytes(b"%PDF-1.5\n" + b"\x00garbage" * 50)
    bad_man = tmp_path / "broken.1.gz"
    bad_man.write_bytes(b"\x1f\x8b\x08 not really gzip")
    missing = tmp_path / "nowhere.html"
    good = sources.man_page("vvp", "GPL-2.0-or-later")
    report = build_corpus(tmp_path / "kb", [sources.file_source(bad_pdf), good,
                                            sources.file_source(bad_man),
                                            sources.file_source(missing)])
    status = {s.name: s for s in report.sources}
    assert status["man-vvp"].status == "built"
    for name, path in [("file-broken.pdf", bad_pdf), ("file-broken.1.gz", bad_man),
                       ("file-nowhere.html", missing)]:
        assert status[name].status == "failed"
        assert str(path) in status[name].error and "\n" not in status[name].error
    assert {c.source for c in load_corpus(tmp_path / "kb")} == {"man-vvp"}
    manifest = json.loads((tmp_path / "kb" / "manifest.json").read_text())
    assert set(manifest["failed"]) == {"file-broken.pdf", "file-broken.1.gz", "file-nowhere.html"}


def test_nothing_readable_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(LeanstackError, match="no source could be read"):
        build_corpus(tmp_path, [sources.file_source(tmp_path / "missing.pdf")])


def test_extra_markdown_file_is_split_at_headings(tmp_path: Path) -> None:
    doc = tmp_path / "notes.md"
    doc.write_text("# Clock gating\n" + "Gate the clock of idle registers to save power. " * 5 +
                   "\n\n## Retention\n" + "Retention flops keep state while power is off. " * 5)
    build_corpus(tmp_path / "kb", [sources.file_source(doc, "CC0-1.0")])
    chunks = load_corpus(tmp_path / "kb")
    assert [(c.section, c.license) for c in chunks] == [("Clock gating", "CC0-1.0"),
                                                       ("Retention", "CC0-1.0")]


def test_missing_corpus_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(LeanstackError, match="corpus build"):
        load_corpus(tmp_path)


def test_pdf_manual_and_html_manual_split_at_numbered_headings() -> None:
    from leanstack.chipexpert import extract

    manual = sources.DEBIAN_DOC / "yosys/manual.pdf"
    html = sources.DEBIAN_DOC / "ngspice-doc/html/manual.html"
    require([str(p) for p in (manual, html) if not p.exists()], "run scripts/system-deps.sh")
    pdf = {s.title: s.text for s in extract.pdf_manual_sections(manual, skip=("C.",))}
    assert "backslash" in pdf["4.2.1 RTLIL Identifiers"]
    assert not any(t.startswith("C.") for t in pdf)
    ng = {s.title: s.text for s in extract.html_sections(html)}
    assert "PULSE" in ng["4.1.1 Pulse"] and "TD" in ng["4.1.1 Pulse"]


def test_groff_timeout_is_one_line_and_the_build_goes_on(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A groff that hangs: its man page is reported as skipped in one line, the other source is
    built."""
    from leanstack.chipexpert import extract

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "groff").write_text("#!/bin/sh\nexec sleep 30\n")
    (bin_dir / "groff").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(extract, "GROFF_TIMEOUT_S", 0.5)
    page = tmp_path / "tool.1"
    page.write_text(".TH TOOL 1\n.SH NAME\ntool \\- does things\n")
    doc = tmp_path / "notes.md"
    doc.write_text("# Clock gating\n" + "Gate the clock of idle registers to save power. " * 5)
    report = build_corpus(tmp_path / "kb", [sources.file_source(page),
                                            sources.file_source(doc)])
    status = {s.name: s for s in report.sources}
    assert status["file-tool.1"].status == "failed"
    assert "groff ran over 0.5 s" in status["file-tool.1"].error
    assert "\n" not in status["file-tool.1"].error
    assert status["file-notes.md"].status == "built"
