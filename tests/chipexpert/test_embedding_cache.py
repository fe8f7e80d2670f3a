"""The embedding cache of ``chip corpus build``: hits and misses, a changed chunk embedded again,
a damaged or foreign cache file ignored with a one-line note, and the package's prebuilt cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from leanstack.chipexpert import embedding_cache as ec
from leanstack.chipexpert.chunking import heading_paths
from leanstack.chipexpert.cli import chip_app
from leanstack.chipexpert.corpus import CORPUS_FILE, build_corpus, load_corpus
from leanstack.chipexpert.retrieval import INDEX_DIR, Retriever, build_index, index_text

from .conftest import small_sources


@pytest.fixture()
def kb(tmp_path: Path) -> Path:
    out = tmp_path / "kb"
    build_corpus(out, small_sources()[2:])  # the vvp man page: a few chunks
    return out


def dense(kb: Path) -> np.ndarray:
    return np.load(kb / INDEX_DIR / "dense.npy")


def index_texts(kb: Path) -> list[str]:
    chunks = load_corpus(kb)
    paths = heading_paths(chunks)
    return [index_text(c, paths[(c.source, c.section)]) for c in chunks]


def test_a_rebuild_embeds_nothing_and_gives_the_same_index(kb: Path, embedding_model) -> None:
    chunks = len((kb / CORPUS_FILE).read_text().splitlines())
    assert build_index(kb, model=embedding_model, prebuilt=False) == chunks  # all missed
    first = dense(kb)
    cache = ec.EmbeddingCache.load(kb / ec.CACHE_FILE, ec.model_id())
    assert len(cache) == chunks and not cache.note
    assert np.array_equal(first, ec.as_stored(first))  # stored as the cache keeps it
    (kb / INDEX_DIR / "dense.npy").unlink()  # the index itself is not where it comes from
    assert build_index(kb, model=embedding_model, prebuilt=False) == 0  # all hit
    assert np.array_equal(dense(kb), first)
    assert Retriever.load(kb, model=embedding_model).search("run a compiled simulation", 1)


def test_a_changed_chunk_is_embedded_again(kb: Path, embedding_model) -> None:
    build_index(kb, model=embedding_model, prebuilt=False)
    before = dense(kb)
    lines = (kb / CORPUS_FILE).read_text().splitlines()
    record = json.loads(lines[1])
    record["text"] += " The -v flag makes vvp print its progress."
    lines[1] = json.dumps(record)
    (kb / CORPUS_FILE).write_text("\n".join(lines) + "\n")
    assert build_index(kb, model=embedding_model, prebuilt=False) == 1
    after = dense(kb)
    assert not np.allclose(after[1], before[1])
    assert np.array_equal(np.delete(after, 1, axis=0), np.delete(before, 1, axis=0))
    # the cache keeps both versions: going back embeds nothing
    lines[1] = json.dumps({**record, "text": record["text"].rsplit(" The -v", 1)[0]})
    (kb / CORPUS_FILE).write_text("\n".join(lines) + "\n")
    assert build_index(kb, model=embedding_model, prebuilt=False) == 0
    assert np.array_equal(dense(kb), before)


@pytest.mark.parametrize(("damage", "said"), [
    (lambda p: p.write_bytes(b"not a zip file"), "cannot be read"),
    (lambda p: p.write_bytes(p.read_bytes()[:200]), "cannot be read"),
    (lambda p: ec.EmbeddingCache("another-model", {"ab" * 32: np.ones(3)}).save(p), "made by"),
])
def test_a_damaged_or_foreign_cache_is_ignored_with_a_note(kb: Path, embedding_model, damage,
                                                           said: str) -> None:
    chunks = build_index(kb, model=embedding_model, prebuilt=False)
    first = dense(kb)
    damage(kb / ec.CACHE_FILE)
    notes: list[str] = []
    assert build_index(kb, model=embedding_model, prebuilt=False, on_note=notes.append) == chunks
    assert len(notes) == 1 and said in notes[0] and "\n" not in notes[0]
    assert np.allclose(dense(kb), first, atol=1e-3)
    # the cache was written again, whole
    assert build_index(kb, model=embedding_model, prebuilt=False, on_note=notes.append) == 0
    assert len(notes) == 1


def test_the_prebuilt_cache_spares_a_fresh_build(kb: Path, tmp_path: Path, embedding_model,
                                                 monkeypatch) -> None:
    build_index(kb, model=embedding_model, prebuilt=False)
    shipped = tmp_path / "shipped.npz"
    ec.EmbeddingCache.load(kb / ec.CACHE_FILE, ec.model_id()).save(shipped)
    monkeypatch.setattr(ec, "prebuilt_path", lambda: shipped)
    fresh = tmp_path / "fresh"
    build_corpus(fresh, small_sources()[2:])
    per_source: list[tuple[str, int, int]] = []
    assert build_index(fresh, model=embedding_model, on_source=lambda *a: per_source.append(a)) \
        == 0
    assert per_source == [] and np.array_equal(dense(fresh), dense(kb))
    assert build_index(fresh, model=embedding_model, prebuilt=False) == 0  # now in its own cache


def test_embedding_progress_is_reported_per_source(tmp_path: Path, embedding_model) -> None:
    kb = tmp_path / "kb"
    build_corpus(kb, small_sources()[1:])  # the iverilog and vvp man pages
    seen: dict[str, list[tuple[int, int]]] = {}
    total = build_index(kb, model=embedding_model, prebuilt=False,
                        on_source=lambda s, d, t: seen.setdefault(s, []).append((d, t)))
    assert set(seen) == {"man-iverilog", "man-vvp"}
    assert sum(steps[-1][1] for steps in seen.values()) == total
    assert all(steps[0][0] == 0 and steps[-1][0] == steps[-1][1] for steps in seen.values())


def test_corpus_build_cli_reports_the_embedding(tmp_path: Path) -> None:
    result = CliRunner().invoke(chip_app, ["corpus", "build", "--only", "man-vvp", "--out",
                                           str(tmp_path / "kb")])
    assert result.exit_code == 0, result.output
    assert "chunks embedded, the rest found in the embedding caches" in result.output
    assert (tmp_path / "kb" / ec.CACHE_FILE).exists()


def test_the_shipped_prebuilt_cache_matches_this_model_and_chunker(kb: Path,
                                                                   embedding_model) -> None:
    shipped = ec.EmbeddingCache.load(ec.prebuilt_path(), ec.model_id())
    assert not shipped.note and len(shipped) > 3000, shipped.note
    assert ec.prebuilt_path().stat().st_size < 4_000_000
    notes: list[str] = []
    assert build_index(kb, model=embedding_model, on_note=notes.append) == 0, \
        "the chunker changed: rebuild the cache with scripts/chip_prebuilt_embeddings.py"
    cached = dense(kb)
    fresh = embedding_model.encode(index_texts(kb))
    assert notes == [] and float(np.min(np.sum(cached * fresh, axis=1))) > 0.999
