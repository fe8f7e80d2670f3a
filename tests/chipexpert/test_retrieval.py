"""Dense, BM25 and fused search over a small real knowledge base, and index persistence."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from leanstack.chipexpert.bm25 import tokenize
from leanstack.chipexpert.corpus import build_corpus
from leanstack.chipexpert.retrieval import Retriever, build_index
from leanstack.errors import LeanstackError

from .conftest import small_sources


@pytest.fixture(scope="module")
def retriever(small_kb: Path, embedding_model) -> Retriever:
    return Retriever.load(small_kb, model=embedding_model)


def sections(hits) -> list[str]:
    return [h.section.split(" -- ")[0] for h in hits]


def test_query_about_a_command_returns_its_help(retriever: Retriever) -> None:
    for method in ("fused", "dense", "bm25"):
        hits = retriever.search("remove unused wires and cells from the design", 3, method)
        assert {"opt_clean", "clean"} & set(sections(hits)), (method, sections(hits))


def test_bm25_matches_identifiers_and_dense_matches_meaning(retriever: Retriever) -> None:
    assert sections(retriever.search("dfflibmap liberty", 1, "bm25")) == ["dfflibmap"]
    # no word of the query appears in the vvp man page's title; the meaning does
    hits = retriever.search("execute the compiled simulation program", 3, "dense")
    assert "man-vvp" in {h.source for h in hits}


def test_results_are_ranked_and_sized(retriever: Retriever) -> None:
    for method in ("fused", "dense", "bm25"):
        hits = retriever.search("static timing analysis", 5, method)
        assert 1 <= len(hits) <= 5
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)
        assert all(h.text and h.source and h.section for h in hits)
    assert sections(retriever.search("static timing analysis", 1, "fused")) == ["sta"]


def test_fused_list_is_built_from_both_retrievers(retriever: Retriever) -> None:
    q = "write the netlist as a Verilog file"
    fused = {h.id for h in retriever.search(q, 10, "fused")}
    dense = {h.id for h in retriever.search(q, 10, "dense")}
    bm25 = {h.id for h in retriever.search(q, 10, "bm25")}
    assert fused <= dense | bm25 or len(fused) == 10
    assert fused & dense and fused & bm25


def test_bad_queries_are_one_line_errors(retriever: Retriever) -> None:
    with pytest.raises(LeanstackError, match="unknown retrieval method"):
        retriever.search("x", 3, "magic")
    with pytest.raises(LeanstackError, match="k must be"):
        retriever.search("x", 0)
    with pytest.raises(LeanstackError, match="empty"):
        retriever.search("   ")
    assert retriever.search("zzzzqqq", 3, "bm25") == []


def test_index_is_reused_and_detects_a_stale_corpus(small_kb: Path, tmp_path: Path,
                                                    embedding_model) -> None:
    kb = tmp_path / "kb"
    shutil.copytree(small_kb, kb)
    assert build_index(kb, model=embedding_model) == 0  # every embedding reused
    sources = small_sources()
    build_corpus(kb, sources[1:])  # drop the yosys help: the corpus changes under the index
    with pytest.raises(LeanstackError, match="older than its corpus"):
        Retriever.load(kb, model=embedding_model)
    assert build_index(kb, model=embedding_model) == 0  # the remaining chunks are all cached
    again = Retriever.load(kb, model=embedding_model)
    assert {c.source for c in again.chunks} == {"man-iverilog", "man-vvp"}


def test_missing_index_is_a_one_line_error(tmp_path: Path) -> None:
    build_corpus(tmp_path, small_sources()[1:])
    with pytest.raises(LeanstackError, match="no search index"):
        Retriever.load(tmp_path)


def test_tokenizer_keeps_identifiers_and_stems_words() -> None:
    toks = tokenize("Running opt_clean and the measurements")
    assert "opt_clean" in toks and "opt" in toks and "clean" in toks
    assert "the" not in toks and "and" not in toks
    assert tokenize("run measure") == [t for t in toks if t in ("run", "measur")]
    assert tokenize(".meas") == tokenize("meas") == tokenize("MEAS")


@pytest.mark.parametrize(("damage", "named"), [
    (lambda ix: (ix / "dense.npy").unlink(), "dense.npy"),
    (lambda ix: (ix / "dense.npy").write_bytes(b"not numpy"), "dense.npy"),
    (lambda ix: shutil.rmtree(ix / "bm25"), "bm25/"),
])
def test_damaged_index_is_a_one_line_error(small_kb: Path, tmp_path: Path, damage,
                                           named: str) -> None:
    kb = tmp_path / "kb"
    shutil.copytree(small_kb, kb)
    damage(kb / "index")
    with pytest.raises(LeanstackError, match=f"no readable {named}.*chip corpus build"):
        Retriever.load(kb)


def test_rebuilt_index_replaces_the_old_one_without_leftovers(small_kb: Path, tmp_path: Path,
                                                               embedding_model) -> None:
    kb = tmp_path / "kb"
    shutil.copytree(small_kb, kb)
    (kb / "index" / "stray-file").write_text("from the old index")
    build_index(kb, model=embedding_model)
    assert not (kb / "index" / "stray-file").exists()
    assert sorted(p.name for p in kb.iterdir() if p.name.startswith(".")) == []
    assert len(Retriever.load(kb, model=embedding_model).chunks) > 0
