"""``chip corpus build`` and ``chip search`` through the typer app."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from leanstack.chipexpert.cli import chip_app

from .conftest import require_docs

runner = CliRunner()


def test_search_json_output(small_kb: Path) -> None:
    result = runner.invoke(chip_app, ["search", "flatten the design hierarchy", "--k", "2",
                                      "--json", "--method", "bm25", "--dir", str(small_kb)])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert len(hits) == 2
    assert all(set(h) == {"source", "section", "text", "score"} for h in hits)
    assert hits[0]["section"].startswith("flatten")
    assert hits[0]["score"] >= hits[1]["score"]


def test_search_text_output(small_kb: Path) -> None:
    result = runner.invoke(chip_app, ["search", "dfflibmap", "--method", "bm25",
                                      "--dir", str(small_kb)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("[1] yosys-help — dfflibmap")


def test_build_reports_skipped_file_and_search_without_index_fails(tmp_path: Path) -> None:
    require_docs()
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.4 truncated")
    out = tmp_path / "kb"
    result = runner.invoke(chip_app, ["corpus", "build", "--out", str(out), "--only", "man-vvp",
                                      "--add", str(broken), "--no-index"])
    assert result.exit_code == 0, result.output
    assert "skipped file-broken.pdf" in result.output
    assert "built     man-vvp" in result.output
    # the typer app raises LeanstackError; the main CLI turns it into one line
    result = runner.invoke(chip_app, ["search", "vvp", "--dir", str(out)])
    assert result.exit_code != 0
    assert "no search index" in str(result.exception)


def test_unknown_only_source_is_rejected(tmp_path: Path) -> None:
    result = runner.invoke(chip_app, ["corpus", "build", "--out", str(tmp_path),
                                      "--only", "nope"])
    assert result.exit_code != 0
    assert "unknown source(s) nope" in str(result.exception)
