"""Chunk-level retrieval evaluation: questions labelled with the chunk(s) holding their answer.

Each question in ``data/chunk_questions.jsonl`` was written by reading one corpus chunk, phrased
the way an engineer would ask, and carries a verbatim evidence span from that chunk; its labels
are the chunk ids whose text contains the span (the same text can sit in two places, e.g. a man
page and the manual). The set is split once, by source document (``document_key``), into a
tuning half and a test half, so no test question comes from a document a tuning question touches;
the split is stored in the file and never recomputed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from leanstack.chipexpert import store
from leanstack.chipexpert.bm25 import tokenize
from leanstack.errors import LeanstackError

KS = (1, 3, 10)
MRR_DEPTH = 10
SPLITS = ("tuning", "test")
LITERAL_OVERLAP = 0.5  # questions sharing at least this share of their words with the chunk


@dataclass(frozen=True)
class ChunkQuestion:
    """A question, its evidence span, the chunks that hold it and its half of the split."""

    id: str
    question: str
    evidence: str
    source: str
    section: str
    chunk_ids: tuple[str, ...]
    document: str
    split: str


def document_key(source: str, section: str) -> str:
    """The source document a chunk belongs to, the unit of the tuning/test split: a man page; a
    chapter of the ngspice or Yosys manual; one yosys command's help; one slide topic; one
    Python module's docstrings."""
    if source.startswith("man-"):
        return source
    if source in ("ngspice-manual", "yosys-manual"):
        m = re.match(r"(?:Chapter\s+)?(\d+)[.\s]", section)
        return f"{source}#{m.group(1) if m else section}"
    if source == "yosys-slides":
        title = re.split(r"\s+[–-]\s+|\s*\(\d+/\d+\)", section)[0].strip()
        return f"{source}#{title}"
    if source.startswith("py-"):
        return f"{source}#{'.'.join(p for p in section.split('.') if p[:1].islower())}"
    return f"{source}#{section.split(' -- ')[0]}"


def default_path() -> Path:
    """The question set shipped with the package."""
    return Path(str(resources.files("leanstack.chipexpert") / "data" / "chunk_questions.jsonl"))


def load_questions(path: Path | None = None, split: str | None = None) -> list[ChunkQuestion]:
    """Read the question set (optionally one half); a malformed item is a one-line error."""
    if split is not None and split not in SPLITS:
        raise LeanstackError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}")
    path = path or default_path()
    items = []
    for n, rec in enumerate(store.read_jsonl(path), 1):
        try:
            item = ChunkQuestion(rec["id"], rec["question"], rec["evidence"], rec["source"],
                                 rec["section"], tuple(rec["chunk_ids"]), rec["document"],
                                 rec["split"])
        except (KeyError, TypeError) as e:
            raise LeanstackError(f"{path}: item {n} lacks {e}; every item needs id, question, "
                                 "evidence, source, section, chunk_ids, document, split") from e
        if item.split not in SPLITS or not item.chunk_ids:
            raise LeanstackError(f"{path}: item {n} needs split tuning|test and >= 1 chunk id")
        items.append(item)
    return [it for it in items if split is None or it.split == split]


def normalise(text: str) -> str:
    """Whitespace collapsed, so a span matches across the chunker's line breaks."""
    return re.sub(r"\s+", " ", text).strip()


def lexical_overlap(question: str, chunk_text: str) -> float:
    """Share of the question's content words (stemmed, stop words out) found in the chunk."""
    words = set(tokenize(question))
    return len(words & set(tokenize(chunk_text))) / len(words) if words else 0.0


def first_hit(ranked_ids: Iterable[str], answers: Iterable[str]) -> int | None:
    """1-based rank of the first answering chunk in ``ranked_ids`` (None: not there)."""
    wanted = set(answers)
    return next((r for r, cid in enumerate(ranked_ids, 1) if cid in wanted), None)


def metrics(ranks: Iterable[int | None]) -> dict[str, float]:
    """recall@1/3/10 and MRR@10 of first-hit ranks."""
    ranks = list(ranks)
    if not ranks:
        raise LeanstackError("no questions to score")
    out = {f"recall_at_{k}": sum(1 for r in ranks if r is not None and r <= k) / len(ranks)
           for k in KS}
    out["mrr_at_10"] = sum(1 / r for r in ranks if r is not None and r <= MRR_DEPTH) / len(ranks)
    return out


def evaluate(rank: Callable[[str], list[str]], items: list[ChunkQuestion]) -> dict:
    """Score a ranking function (question -> chunk ids, best first) on ``items``: the metrics
    and each question's first-hit rank."""
    ranks = {it.id: first_hit(rank(it.question)[:MRR_DEPTH], it.chunk_ids) for it in items}
    return {**metrics(ranks.values()), "ranks": ranks}
