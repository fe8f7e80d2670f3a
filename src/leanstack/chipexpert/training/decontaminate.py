"""Keep evaluation text out of training data: MinHash near-duplicate removal, and word n-gram
overlap against every ChipICD-Bench item, every retrieval-evaluation question (section- and
chunk-level; the chunk-level answer evidence only for instruction and preference data), the demo
questions and the held-out perplexity texts. A training record sharing one n-gram with an
evaluation text is removed, and the report names both.

N-gram sizes: 8 words for questions and prose answers (short; a shared 8-word run is a copied
phrase, not a common idiom), 13 words for code answers and long held-out texts, where shorter
runs such as a port list recur by chance (inline code in a question counts as code).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import TypeVar

from leanstack.chipexpert.bench.items import load_items

PROSE_N = 8
CODE_N = 13
MIN_WHOLE_WORDS = 6  # prose shorter than its n counts as one n-gram when this long
DEDUP_THRESHOLD = 0.8
NUM_PERM = 128
SHINGLE = 5
_WORD = re.compile(r"[a-z0-9]+")

R = TypeVar("R")


@dataclass(frozen=True)
class EvalText:
    """One evaluation text: the set it belongs to, the item it comes from, its n-gram size, the
    training splits it is checked against (None: all), and whether only the answers of those
    records are checked (not the prompts, whose passages are knowledge-base text)."""

    set_name: str
    item_id: str
    text: str
    n: int
    splits: tuple[str, ...] | None = None
    answers_only: bool = False


def words(text: str) -> list[str]:
    """Lower-case alphanumeric words (punctuation and markup fall away)."""
    return _WORD.findall(text.lower())


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """The word n-grams of ``text``."""
    ws = words(text)
    return {tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)}


def _prose_and_code(text: str) -> tuple[str, list[str]]:
    """``text`` without its `inline code` spans, and those spans."""
    spans = re.findall(r"`([^`]+)`", text)
    return re.sub(r"`[^`]+`", " ", text), spans


def bench_texts() -> list[EvalText]:
    """Every ChipICD-Bench item: its question (with choices; `inline code` such as a port list
    counts as code), and its reference answer (code with the longer n-gram; a bare MCQ letter
    is skipped)."""
    out = []
    for it in load_items():
        prose, spans = _prose_and_code(" ".join([it.question, *it.choices]))
        out.append(EvalText("chipicd-bench", it.id, prose, PROSE_N))
        out += [EvalText("chipicd-bench", it.id, span, CODE_N) for span in spans]
        if it.type in ("verilog", "spice"):
            out.append(EvalText("chipicd-bench", it.id, it.answer, CODE_N))
        elif it.type != "mcq":
            out.append(EvalText("chipicd-bench", it.id, it.answer, PROSE_N))
    return out


def retrieval_eval_texts() -> list[EvalText]:
    """The retrieval evaluation questions shipped with the package."""
    path = resources.files("leanstack.chipexpert") / "data" / "retrieval_eval.jsonl"
    recs = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    return [EvalText("retrieval-eval", r["id"], r["question"], PROSE_N) for r in recs]


def chunk_question_texts() -> list[EvalText]:
    """The chunk-level retrieval questions (both halves), and their evidence spans. The
    evidence is knowledge-base text, so it stays in the pre-training corpus and in prompts'
    passages (the documents the assistant retrieves from); it is kept out of the answers of the
    instruction and preference data, which would teach a question's answer directly."""
    path = resources.files("leanstack.chipexpert") / "data" / "chunk_questions.jsonl"
    if not path.is_file():
        return []
    recs = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    return [EvalText("chunk-questions", r["id"], r["question"], PROSE_N) for r in recs] + [
        EvalText("chunk-questions-evidence", r["id"], r["evidence"], PROSE_N, ("sft", "dpo"),
                 answers_only=True)
        for r in recs if r.get("evidence")]


def demo_texts() -> list[EvalText]:
    """The questions the demo asks."""
    from leanstack.chipexpert.demo import DEMO_QUESTIONS

    return [EvalText("demo-questions", f"demo-{i}", q, PROSE_N)
            for i, q in enumerate(DEMO_QUESTIONS, 1)]


def evaluation_texts(heldout: dict[str, str] | None = None) -> list[EvalText]:
    """Every evaluation text; ``heldout`` adds named held-out texts (13-gram)."""
    texts = bench_texts() + retrieval_eval_texts() + chunk_question_texts() + demo_texts()
    for name, text in (heldout or {}).items():
        texts.append(EvalText(name, name, text, CODE_N))
    return texts


@dataclass
class Contamination:
    """Hits of one training split: (record id, set name, item id) per hit; removed record ids."""

    checked: int = 0
    hits: list[tuple[str, str, str]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


class OverlapIndex:
    """The n-grams of the evaluation texts, mapped to the (set, item) they come from."""

    def __init__(self, texts: Sequence[EvalText]) -> None:
        self.texts = list(texts)
        self.sizes = sorted({t.n for t in texts})
        self.grams: dict[int, dict[tuple[str, ...], set[tuple[str, str]]]] = \
            {n: {} for n in self.sizes}
        self.whole: dict[str, set[tuple[str, str]]] = {}
        self.scope = {t.set_name: t.splits for t in texts}
        self.answers_only = {t.set_name for t in texts if t.answers_only}
        for t in texts:
            ws = words(t.text)
            key = (t.set_name, t.item_id)
            if len(ws) < t.n:
                if t.n == PROSE_N and len(ws) >= MIN_WHOLE_WORDS:
                    self.whole.setdefault(" ".join(ws), set()).add(key)
                continue
            for g in ngrams(t.text, t.n):
                self.grams[t.n].setdefault(g, set()).add(key)

    def matches(self, text: str, split: str | None = None,
                answer: bool = False) -> set[tuple[str, str]]:
        """The (set, item) pairs whose n-grams occur in ``text`` (only sets checked against
        ``split`` when one is named; answer-only sets only when ``text`` is an ``answer``)."""
        ws = words(text)
        found: set[tuple[str, str]] = set()
        for n in self.sizes:
            table = self.grams[n]
            for i in range(len(ws) - n + 1):
                if (hit := table.get(tuple(ws[i:i + n]))) is not None:
                    found |= hit
        if self.whole:
            joined = f" {' '.join(ws)} "
            for phrase, keys in self.whole.items():
                if f" {phrase} " in joined:
                    found |= keys
        if split is not None:
            found = {k for k in found if (scope := self.scope[k[0]]) is None or split in scope}
        if not answer:
            found = {k for k in found if k[0] not in self.answers_only}
        return found

    def filter(self, records: Iterable[R], text_of: Callable[[R], str],
               id_of: Callable[[R], str], split: str | None = None,
               answer_of: Callable[[R], str] | None = None) -> tuple[list[R], Contamination]:
        """The records (of training ``split``) that share no n-gram with an evaluation text
        checked against that split, and what was removed; ``answer_of`` gives the part of a
        record the answer-only sets are checked against."""
        kept, report = [], Contamination()
        for rec in records:
            report.checked += 1
            hits = self.matches(text_of(rec), split)
            if answer_of is not None:
                hits |= self.matches(answer_of(rec), split, answer=True)
            if hits:
                rid = id_of(rec)
                report.removed.append(rid)
                report.hits.extend((rid, s, i) for s, i in sorted(hits))
            else:
                kept.append(rec)
        return kept, report

    def summary(self, reports: dict[str, Contamination]) -> dict:
        """``decontamination.json``'s ``sets`` part: per evaluation set its items, n-gram
        sizes, and per training split the hits and the removed record ids."""
        out: dict[str, dict] = {}
        for t in self.texts:
            entry = out.setdefault(t.set_name, {"items": set(), "ngram_sizes": set(),
                                                "checked_against": list(t.splits or
                                                                        ("cpt", "sft", "dpo")),
                                                "answers_only": t.answers_only,
                                                "splits": {}})
            entry["items"].add(t.item_id)
            entry["ngram_sizes"].add(t.n)
        for entry in out.values():
            entry["items"] = len(entry["items"])
            entry["ngram_sizes"] = sorted(entry["ngram_sizes"])
        for split, rep in reports.items():
            for name, entry in out.items():
                if split not in entry["checked_against"]:
                    continue
                hits = [(r, i) for r, s, i in rep.hits if s == name]
                entry["splits"][split] = {
                    "records_checked": rep.checked, "hits": len(hits),
                    "removed": sorted({r for r, _ in hits}),
                    "items_hit": sorted({i for _, i in hits})}
        return out


def _minhash(text: str):  # noqa: ANN202 - datasketch is imported lazily (slow import)
    from datasketch import MinHash

    ws = words(text)
    shingles = {" ".join(ws[i:i + SHINGLE]) for i in range(max(1, len(ws) - SHINGLE + 1))}
    m = MinHash(num_perm=NUM_PERM, seed=1)
    m.update_batch([s.encode() for s in shingles])
    return m


def deduplicate(records: Sequence[R], text_of: Callable[[R], str], id_of: Callable[[R], str],
                threshold: float = DEDUP_THRESHOLD) -> tuple[list[R], dict[str, str]]:
    """Drop each record whose 5-word-shingle Jaccard similarity to an earlier kept record is
    estimated at or above ``threshold`` (MinHash LSH); returns the kept records and, per dropped
    id, the kept id it duplicates."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    kept: list[R] = []
    dropped: dict[str, str] = {}
    for n, rec in enumerate(records):
        m = _minhash(text_of(rec))
        if similar := lsh.query(m):
            dropped[id_of(rec)] = similar[0].split("\0", 1)[1]
            continue
        lsh.insert(f"{n}\0{id_of(rec)}", m)
        kept.append(rec)
    return kept, dropped
