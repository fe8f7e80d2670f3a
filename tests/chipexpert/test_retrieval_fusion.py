"""The fused retrieval's parts: tool names in questions, convex fusion, heading paths, one chunk
per section, and the index format change that forces a rebuild."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from leanstack.chipexpert.chunking import Chunk, heading_paths
from leanstack.chipexpert.corpus import build_corpus
from leanstack.chipexpert.fusion import convex_fusion, min_max
from leanstack.chipexpert.query import (
    mentioned_tools,
    source_tools,
    tool_vocabulary,
    without_tools,
)
from leanstack.chipexpert.retrieval import (
    INDEX_DIR,
    Retriever,
    build_index,
    index_text,
    one_per_section,
)
from leanstack.errors import LeanstackError

from .conftest import small_sources

SOURCES = ["yosys-help", "yosys-manual", "ngspice-manual", "man-iverilog", "man-vvp",
           "py-amaranth"]


def chunk(source: str, section: str, text: str = "some text here") -> Chunk:
    return Chunk(f"{source}/{section}/{text}", source, section, text, "MIT")


def test_tools_come_from_source_names() -> None:
    assert source_tools("man-iverilog") == {"iverilog"}
    assert source_tools("yosys-help") == {"yosys"}
    assert source_tools("py-amaranth") == {"amaranth"}
    vocab = tool_vocabulary(SOURCES)
    assert {"yosys", "ngspice", "iverilog", "vvp", "amaranth", "spice", "icarus"} <= vocab
    assert not {"man", "help", "manual", "py"} & vocab
    assert "verilator" not in tool_vocabulary(["yosys-help"])  # only tools of this corpus


def test_question_without_its_tool_names() -> None:
    vocab = tool_vocabulary(SOURCES)
    q = "How do I get a count of cells and wires in my design in yosys?"
    assert mentioned_tools(q, vocab) == {"yosys"}
    assert without_tools(q, vocab) == "How do I get a count of cells and wires in my design?"
    assert without_tools("What is RTLIL in Yosys?", vocab) == "What is RTLIL?"
    assert mentioned_tools("In Amaranth, how do I synchronize?", vocab) == {"amaranth"}
    assert mentioned_tools("a SPICE netlist with Icarus", vocab) == {"ngspice", "iverilog", "vvp"}
    assert without_tools("yosys", vocab) == "yosys"  # nothing else left: keep the question
    assert mentioned_tools("a yosysish word and ngspiced", vocab) == set()
    assert without_tools("plain question", set()) == "plain question"


def test_convex_fusion_normalises_then_weighs() -> None:
    dense = np.array([0.2, 0.6, 0.4])
    sparse = np.array([10.0, 0.0, 5.0])
    np.testing.assert_allclose(min_max(dense), [0.0, 1.0, 0.5])
    np.testing.assert_allclose(convex_fusion(dense, sparse, 1.0), [0.0, 1.0, 0.5])
    np.testing.assert_allclose(convex_fusion(dense, sparse, 0.0), [1.0, 0.0, 0.5])
    np.testing.assert_allclose(convex_fusion(dense, sparse, 0.7), [0.3, 0.7, 0.5])
    np.testing.assert_allclose(min_max(np.array([3.0, 3.0])), [0.0, 0.0])
    with pytest.raises(ValueError, match="dense_weight"):
        convex_fusion(dense, sparse, 1.5)
    with pytest.raises(ValueError, match="one score per row"):
        convex_fusion(dense, sparse[:2], 0.5)


def test_heading_paths_prefix_numbered_parents() -> None:
    chunks = [chunk("ngspice-manual", "4 Circuit Elements"),
              chunk("ngspice-manual", "4.1 Independent Sources for Voltage or Current"),
              chunk("ngspice-manual", "4.1.2 Sinusoidal"),
              chunk("ngspice-manual", "4.1.2 Sinusoidal", "second chunk of it"),
              chunk("yosys-manual", "4.1 Other Manual"),
              chunk("yosys-help", "stat -- print some statistics")]
    paths = heading_paths(chunks)
    assert paths[("ngspice-manual", "4.1.2 Sinusoidal")] == \
        "Circuit Elements > Independent Sources for Voltage or Current > 4.1.2 Sinusoidal"
    assert paths[("ngspice-manual", "4 Circuit Elements")] == "4 Circuit Elements"
    assert paths[("yosys-manual", "4.1 Other Manual")] == "4.1 Other Manual"  # no 4 in that source
    assert paths[("yosys-help", "stat -- print some statistics")] == \
        "stat -- print some statistics"
    assert index_text(chunks[2], paths[("ngspice-manual", "4.1.2 Sinusoidal")]).startswith(
        "Circuit Elements > ")


def test_one_per_section_keeps_the_best_chunk_of_each() -> None:
    chunks = [chunk("s", "A", "a1"), chunk("s", "A", "a2"), chunk("s", "B"), chunk("t", "A")]
    ranked = [(1, 0.9), (0, 0.8), (2, 0.7), (3, 0.6)]
    assert one_per_section(ranked, chunks, 3) == [(1, 0.9), (2, 0.7), (3, 0.6)]
    assert one_per_section(ranked, chunks, 1) == [(1, 0.9)]


@pytest.fixture(scope="module")
def retriever(small_kb: Path, embedding_model) -> Retriever:
    return Retriever.load(small_kb, model=embedding_model)


def test_every_method_can_return_distinct_sections(retriever: Retriever) -> None:
    for method in ("fused", "rrf", "dense", "bm25"):
        hits = retriever.search("iverilog command line options", 6, method, per_section=1)
        keys = [(h.source, h.section) for h in hits]
        assert len(keys) == len(set(keys)) > 1, method


def test_default_search_allows_several_chunks_of_a_section(retriever: Retriever) -> None:
    hits = retriever.search("iverilog command line options", 6, "bm25")
    keys = [(h.source, h.section) for h in hits]
    assert len(keys) > len(set(keys))  # the Options section has many chunks


def test_named_tool_steers_fused_search(retriever: Retriever) -> None:
    # without the tool name the question is about yosys' own command; naming vvp moves it
    hits = retriever.search("how do I run the compiled simulation with vvp", 3)
    assert hits[0].source == "man-vvp"
    bm25 = retriever.bm25.scores("dfflibmap liberty")
    assert bm25.shape == (len(retriever.chunks),)
    assert int(np.argmax(bm25)) == next(i for i, c in enumerate(retriever.chunks)
                                        if c.section.startswith("dfflibmap"))
    assert not retriever.bm25.scores("zzzzqqq").any()


def test_an_older_index_format_is_refused_then_rebuilt(tmp_path: Path,
                                                       embedding_model) -> None:
    kb = tmp_path / "kb"
    build_corpus(kb, small_sources()[2:])  # the vvp man page: a few chunks
    build_index(kb, model=embedding_model)
    meta_path = kb / INDEX_DIR / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["version"] = 1
    del meta["text_keys"]  # what an index of the first format looked like
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(LeanstackError, match="older format.*corpus build"):
        Retriever.load(kb, model=embedding_model)
    # rebuilt without a crash; the embeddings come from the cache kept next to the index
    assert build_index(kb, model=embedding_model) == 0
    assert build_index(kb, model=embedding_model, prebuilt=False) == 0
    assert Retriever.load(kb, model=embedding_model).search("run a compiled simulation", 1)
