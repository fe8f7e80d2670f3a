"""Extractive answers: the sentences of the retrieved passages that best match the question,
each followed by the number of its passage, so every word of the answer is quoted from the
documentation and every citation points at a passage that was shown.

A candidate is a sentence of a passage, or the title of a command-reference section (there the
title often is the answer: "opt_clean -- remove unused cells and wires"). Candidates are
ranked by the cosine similarity of their embeddings to the question's, plus the share of the
question's (stemmed) words they contain, plus a small bonus for passages retrieval ranked first.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from leanstack.chipexpert.bm25 import tokenize
from leanstack.chipexpert.grounding import split_sentences

MAX_SENTENCES = 2
MIN_WORDS = 3
MAX_WORDS = 60
LEXICAL_WEIGHT = 0.5  # the share of question words is worth this much next to the cosine
RANK_BONUS = 0.05  # for the first passage, falling linearly to 0 for the last
SECOND_WITHIN = 0.8  # a further sentence is added only when it scores this share of the best


@dataclass(frozen=True)
class Candidate:
    """A quotable piece of passage ``n``."""

    n: int
    text: str
    score: float = 0.0


@dataclass(frozen=True)
class Passage:
    """What extraction needs of a retrieved passage: its number, section title and text."""

    n: int
    section: str
    text: str


def passage_sentences(text: str) -> list[str]:
    """The sentences of a passage; a paragraph that starts in lower case continues the one
    before it (documentation puts an example on its own line, then "measures the time ..."), so
    the two are joined into one sentence."""
    out: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        sentences = split_sentences(para)
        if sentences and out and sentences[0][:1].islower():
            sentences[0] = f"{out.pop()} {sentences[0]}"
        out.extend(sentences)
    return out


def command_name(section: str) -> str | None:
    """The command a section of a command reference documents: ``opt_clean`` for
    "opt_clean -- remove unused cells and wires", else None."""
    name, sep, _ = section.partition(" -- ")
    return name.strip() if sep and re.fullmatch(r"[\w.$-]+", name.strip()) else None


def candidates(passages: Sequence[Passage]) -> list[Candidate]:
    """Every sentence of every passage with ``MIN_WORDS``..``MAX_WORDS`` words (longer ones cut
    to ``MAX_WORDS`` with an ellipsis), and the title of each command-reference section; each
    text once."""
    out, seen = [], set()
    for p in passages:
        name = command_name(p.section)
        texts = ([p.section] if name else []) + passage_sentences(p.text)
        for text in texts:
            words = text.split()
            if len(words) < MIN_WORDS or text in seen:
                continue
            seen.add(text)
            out.append(Candidate(p.n, text if len(words) <= MAX_WORDS else
                                 " ".join(words[:MAX_WORDS]) + " …"))
    return out


def lexical_overlap(question: str, text: str) -> float:
    """Share of the question's distinct stemmed words that ``text`` contains (0..1)."""
    wanted = set(tokenize(question))
    return len(wanted & set(tokenize(text))) / len(wanted) if wanted else 0.0


def rank(question: str, passages: Sequence[Passage],
         embed: Callable[[list[str]], np.ndarray] | None) -> list[Candidate]:
    """The candidates of ``passages`` best first. ``embed`` maps texts to unit vectors (None:
    words only)."""
    found = candidates(passages)
    if not found:
        return []
    cosine = np.zeros(len(found))
    if embed is not None:
        vectors = embed([question, *(c.text for c in found)])
        cosine = vectors[1:] @ vectors[0]
    order = {p.n: i for i, p in enumerate(passages)}
    last = max(len(passages) - 1, 1)
    scored = [Candidate(c.n, c.text, float(cosine[i]) + LEXICAL_WEIGHT * lexical_overlap(
        question, c.text) + RANK_BONUS * (1 - order[c.n] / last)) for i, c in enumerate(found)]
    return sorted(scored, key=lambda c: -c.score)


def extract_answer(question: str, passages: Sequence[Passage],
                   embed: Callable[[list[str]], np.ndarray] | None,
                   max_sentences: int = MAX_SENTENCES) -> str:
    """The best sentence, and up to ``max_sentences - 1`` more that score nearly as well, each
    with its citation: "Sentence one. [2] Sentence two. [1]". Empty when no passage has a
    quotable sentence."""
    ranked = rank(question, passages, embed)
    if not ranked:
        return ""
    picked = [ranked[0]]
    for c in ranked[1:]:
        if len(picked) == max_sentences or c.score < SECOND_WITHIN * ranked[0].score:
            break
        picked.append(c)
    # in reading order: passages as retrieved, sentences as written; one citation per passage
    position = {(c.n, c.text): i for i, c in enumerate(candidates(passages))}
    picked.sort(key=lambda c: position[(c.n, c.text)])
    # a command's sentences are introduced by its name ("opt_clean: This pass ...")
    names = {p.n: command_name(p.section) for p in passages}
    parts = []
    for i, c in enumerate(picked):
        first_of_passage = i == 0 or picked[i - 1].n != c.n
        last_of_passage = i + 1 == len(picked) or picked[i + 1].n != c.n
        name = names[c.n]
        text = f"{name}: {c.text}" if first_of_passage and name and not \
            c.text.startswith(name) else c.text
        text = text if re.search(r"[.!?:…]$", text) else text + "."  # a title or a code line
        parts.append(f"{text} [{c.n}]" if last_of_passage else text)
    return " ".join(parts)
