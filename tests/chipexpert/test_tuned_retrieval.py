"""The fine-tuned question encoder and the re-ranker: trained on tuning items only, used by
search when present, a clear note (base model) when absent."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from leanstack.chipexpert import finetune
from leanstack.chipexpert.chunk_eval import ChunkQuestion
from leanstack.chipexpert.cli import chip_app
from leanstack.chipexpert.finetune import TuneSettings, finetuned_dir
from leanstack.chipexpert.rerank import Reranker, reranker_dir, train_reranker
from leanstack.chipexpert.retrieval import MODEL_NAME, Retriever, query_encoder
from leanstack.chipexpert.synthetic_queries import synthetic_queries
from leanstack.errors import LeanstackError


def questions(retriever: Retriever, split: str = "tuning") -> list[ChunkQuestion]:
    """One question per yosys command section: its one-line description."""
    out, seen = [], set()
    for c in retriever.chunks:
        if c.source == "yosys-help" and c.section not in seen and " -- " in c.section:
            seen.add(c.section)
            out.append(ChunkQuestion(f"h{len(out)}", "how do I " + c.section.split(" -- ")[1],
                                     c.text[:30], c.source, c.section, (c.id,), c.section,
                                     split))
    return out


@pytest.fixture(scope="module")
def tuned_kb(small_kb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the small knowledge base with a (tiny) fine-tuned encoder and a re-ranker."""
    kb = tmp_path_factory.mktemp("tuned") / "kb"
    shutil.copytree(small_kb, kb)
    base = Retriever.load(kb)
    finetune.train_embedder(kb, base.chunks, base.dense.vectors, questions(base),
                            TuneSettings(title_pairs=3, cloze_pairs=3, option_pairs=2,
                                         model_pairs=0, epochs=1, batch_size=16))
    train_reranker(Retriever.load(kb), questions(base)).save(reranker_dir(kb))
    return kb


def test_without_a_finetuned_encoder_search_says_it_uses_the_base_model(small_kb: Path) -> None:
    name, path, note = query_encoder(small_kb)
    assert (name, path) == (MODEL_NAME, None)
    assert "base" in note and "tune-retriever" in note
    result = CliRunner().invoke(chip_app, ["search", "flatten the design", "--method", "dense",
                                           "--dir", str(small_kb)])
    assert result.exit_code == 0, result.output
    assert "query encoder: base" in result.stderr


def test_the_finetuned_encoder_is_used_when_present(tuned_kb: Path, embedding_model) -> None:
    retriever = Retriever.load(tuned_kb)
    assert retriever.query_model_name.startswith(f"{MODEL_NAME}-q-ft-")
    tuned = retriever.query_vector("remove unused cells and wires")
    base = embedding_model.encode(["remove unused cells and wires"])[0]
    assert np.linalg.norm(tuned) == pytest.approx(1.0, abs=1e-4)
    assert not np.allclose(tuned, base, atol=1e-4)  # a different model embedded the question
    hits = retriever.search("remove unused cells and wires", 3, "dense")
    assert len(hits) == 3
    result = CliRunner().invoke(chip_app, ["search", "flatten the design", "--dir",
                                           str(tuned_kb)])
    assert result.exit_code == 0, result.output
    assert "query encoder: fine-tuned" in result.stderr


def test_reranked_search_reorders_the_fused_candidates(tuned_kb: Path) -> None:
    retriever = Retriever.load(tuned_kb)
    assert retriever.reranker is not None
    fused = [h.id for h in retriever.search("flatten the design hierarchy", 20, "fused")]
    reranked = [h.id for h in retriever.search("flatten the design hierarchy", 20, "reranked")]
    assert sorted(fused) == sorted(reranked)  # same candidates, learned order
    assert retriever.search("flatten the design hierarchy", 1, "reranked")[0].section \
        .startswith("flatten")


def test_reranker_needs_training_and_a_sound_file(small_kb: Path, tmp_path: Path) -> None:
    with pytest.raises(LeanstackError, match="no re-ranker"):
        Retriever.load(small_kb).search("flatten", 3, "reranked")
    bad = tmp_path / "reranker.json"
    bad.write_text('{"features": ["x"]}')
    with pytest.raises(LeanstackError, match="tune-retriever"):
        Reranker.load(bad)


def test_training_refuses_test_items(small_kb: Path) -> None:
    retriever = Retriever.load(small_kb)
    test_items = questions(retriever, split="test")
    with pytest.raises(LeanstackError, match="tuning half"):
        train_reranker(retriever, test_items)
    with pytest.raises(LeanstackError, match="tuning half"):
        finetune.train_embedder(small_kb, retriever.chunks, retriever.dense.vectors, test_items)
    assert not finetuned_dir(small_kb).exists()


def test_synthetic_queries_come_from_titles_and_sentences(small_kb: Path) -> None:
    chunks = Retriever.load(small_kb).chunks
    queries = synthetic_queries(chunks, {"title": 20, "cloze": 20})
    kinds = [kind for _, _, kind in queries]
    assert 0 < kinds.count("title") <= 20 and kinds.count("cloze") == 20
    assert set(kinds) == {"title", "cloze"}
    for text, row, kind in queries:
        if kind == "cloze":
            assert text in " ".join(chunks[row].text.split())
        else:
            assert "--" not in text and not text[0].isdigit()
