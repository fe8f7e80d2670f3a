"""The evidence-sentence index and the re-ranker that uses it: sentences split sensibly, the index
survives a round trip and refuses a stale corpus, the second stage moves the chunk holding a
quoted sentence to the top, and ``auto`` picks the re-ranker only where one was trained."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from leanstack.chipexpert.chunk_eval import ChunkQuestion
from leanstack.chipexpert.cli import chip_app
from leanstack.chipexpert.rerank import (
    CHUNK_FEATURES,
    FEATURES,
    Reranker,
    features,
    reranker_dir,
    train_reranker,
)
from leanstack.chipexpert.retrieval import Retriever
from leanstack.chipexpert.sentences import SentenceIndex, sentences_dir, split_sentences
from leanstack.errors import LeanstackError


def test_sentences_are_cut_at_items_and_sentence_ends() -> None:
    text = ("-o <file>\nwrite the output to this file. The default is a.out.\n\n"
            "-v\nverbose.")
    assert split_sentences(text) == ["-o <file>", "write the output to this file.",
                                     "The default is a.out. -v verbose."]
    assert split_sentences("one two") == ["one two"]


@pytest.fixture(scope="module")
def with_sentences(small_kb: Path, embedding_model, tmp_path_factory) -> Path:
    """A copy of the small knowledge base with its sentence index."""
    kb = tmp_path_factory.mktemp("sentences") / "kb"
    shutil.copytree(small_kb, kb)
    retriever = Retriever.load(kb, model=embedding_model)
    SentenceIndex.build(retriever.chunks, embedding_model).save(sentences_dir(kb),
                                                                retriever.corpus_sha256)
    return kb


def quoted(retriever: Retriever) -> list[tuple[str, int]]:
    """(a later sentence of a multi-sentence chunk, that chunk's row), for yosys help chunks."""
    out = []
    for row, c in enumerate(retriever.chunks):
        parts = [s for s in split_sentences(c.text) if len(s.split()) >= 8]
        if c.source == "yosys-help" and len(parts) >= 3:
            out.append((parts[-1], row))
    return out[:8]


def test_sentence_index_matches_a_quoted_sentence_and_round_trips(with_sentences: Path,
                                                                  embedding_model) -> None:
    retriever = Retriever.load(with_sentences, model=embedding_model)
    index = retriever.sentences
    assert len(index.rows) > len(retriever.chunks)  # more sentences than chunks
    for sentence, row in quoted(retriever)[:3]:
        best = index.max_similarity(retriever.query_vector(sentence))
        assert best[row] == pytest.approx(1.0, abs=1e-3)  # the sentence itself is indexed
        chunk_cosine = float(retriever.dense.vectors[row] @ retriever.query_vector(sentence))
        assert best[row] > chunk_cosine
        assert index.max_bm25(sentence)[row] == index.max_bm25(sentence).max()


def test_a_stale_or_missing_sentence_index_is_a_one_line_error(with_sentences: Path,
                                                               small_kb: Path,
                                                               tmp_path: Path) -> None:
    with pytest.raises(LeanstackError, match="tune-retriever"):
        Retriever.load(small_kb).sentences  # noqa: B018 -- never built there
    moved = tmp_path / "sentences"
    shutil.copytree(sentences_dir(with_sentences), moved)
    meta = json.loads((moved / "meta.json").read_text())
    (moved / "meta.json").write_text(json.dumps({**meta, "corpus_sha256": "other"}))
    with pytest.raises(LeanstackError, match="older than the corpus"):
        SentenceIndex.load(moved, "x", meta["chunks"])


def test_second_stage_moves_the_evidence_chunk_to_the_top(with_sentences: Path,
                                                          embedding_model) -> None:
    retriever = Retriever.load(with_sentences, model=embedding_model)
    # a scorer that trusts only the best-matching sentence
    retriever.reranker = Reranker(np.zeros(1, np.float32), np.ones(1, np.float32),
                                  np.ones(1, np.float32), 0.0, {}, ("sentence_dense",))
    moved = 0
    for sentence, row in quoted(retriever):
        fused = [h.id for h in retriever.search(sentence, 20, "fused")]
        reranked = [h.id for h in retriever.search(sentence, 20, "reranked")]
        target = retriever.chunks[row].id
        assert reranked[0] == target
        moved += fused[0] != target
    assert sorted(fused) == sorted(reranked)  # same candidates, another order
    assert moved >= 1  # fusion alone had at least one of them below the top


def test_trained_reranker_uses_sentence_features_and_auto_picks_it(with_sentences: Path,
                                                                   embedding_model) -> None:
    retriever = Retriever.load(with_sentences, model=embedding_model)
    assert retriever.resolve("auto") == "fused"  # nothing trained yet
    items = [ChunkQuestion(f"q{n}", s, s[:20], retriever.chunks[row].source,
                           retriever.chunks[row].section, (retriever.chunks[row].id,), str(n),
                           "tuning") for n, (s, row) in enumerate(quoted(retriever))]
    reranker = train_reranker(retriever, items, feature_set="sentence")
    assert reranker.names == FEATURES and reranker.manifest["feature_set"] == "sentence"
    assert reranker.weights[FEATURES.index("sentence_dense")] > 0
    reranker.save(reranker_dir(with_sentences))
    loaded = Retriever.load(with_sentences, model=embedding_model)
    assert loaded.resolve("auto") == "reranked"
    assert [h.id for h in loaded.search(items[0].question)] == \
        [h.id for h in loaded.search(items[0].question, method="reranked")]
    assert train_reranker(retriever, items).names == CHUNK_FEATURES  # the default set
    with pytest.raises(LeanstackError, match="unknown re-ranker feature set"):
        train_reranker(retriever, items, feature_set="magic")
    with pytest.raises(LeanstackError, match="unknown re-ranker features"):
        features(retriever, "x", [(0, 1.0)], ("magic",))


def test_reranker_file_with_mismatched_weights_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "reranker.json"
    bad.write_text(json.dumps({"features": ["fused", "bm25"], "mean": [0, 0], "scale": [1, 1],
                               "weights": [1.0], "bias": 0.0}))
    with pytest.raises(LeanstackError, match="one weight per feature"):
        Reranker.load(bad)


def test_cli_rejects_an_unknown_method_in_one_line(small_kb: Path) -> None:
    result = CliRunner().invoke(chip_app, ["search", "flatten", "--method", "magic",
                                           "--dir", str(small_kb)])
    assert result.exit_code != 0
    message = str(result.exception)
    assert "unknown retrieval method 'magic'" in message and "auto" in message
    assert "\n" not in message
