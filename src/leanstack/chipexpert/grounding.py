"""Keep an answer to what was shown: split text into sentences, cap a generated answer at a few
sentences without repeats, and take out citations ``[n]`` of passages that were not given."""

from __future__ import annotations

import re

MAX_ANSWER_SENTENCES = 3
MAX_ANSWER_WORDS = 90
NEAR_REPEAT = 0.7  # a sentence sharing this share of its words with an earlier one repeats it
LOOP_WINDOW = 12  # words; a window of them with at most LOOP_DISTINCT different words is a loop
LOOP_DISTINCT = 3
# After . ! ? (not before a citation, which belongs to the sentence it ends), or after a
# citation, when a capital, digit or quote follows.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?!\[\d+\])(?=[\"'(\[]?[A-Z0-9`$-])"
                           r"|(?<=\])\s+(?=[A-Z])")
_CITE = re.compile(r"\s?\[(\d+)\]")


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``: paragraphs (blank-line separated) with their lines joined, split
    after ``.``, ``!`` or ``?`` before a capital, digit or quote."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        joined = " ".join(para.split())
        out.extend(s.strip() for s in _SENTENCE_END.split(joined) if s.strip())
    return out


def _key(sentence: str) -> str:
    """A sentence without citations, case and punctuation."""
    return " ".join(re.findall(r"[a-z0-9]+", _CITE.sub("", sentence).lower()))


def _words(text: str) -> list[tuple[int, str]]:
    """The words of ``text`` with their offsets, lower-cased, citations ``[n]`` left out."""
    return [(m.start(), m.group(0).lower()) for m in re.finditer(r"\S+", text)
            if not re.fullmatch(r"\[\d+\][.,;:]?", m.group(0))]


def loop_start(text: str) -> int | None:
    """The character offset where ``text`` starts looping ("-top [4] -top
    [5] -top ..."): the first window of ``LOOP_WINDOW`` words, citations aside, with at most
    ``LOOP_DISTINCT`` different words; None when there is none."""
    words = _words(text)
    for i in range(len(words) - LOOP_WINDOW + 1):
        window = [w for _, w in words[i:i + LOOP_WINDOW]]
        if len(set(window)) <= LOOP_DISTINCT:
            # the loop starts at the window's first word that comes again in it
            first = next(j for j, w in enumerate(window) if w in window[j + 1:])
            return words[i + first][0]
    return None


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b)


def _kept(sentences: list[str], limit: int) -> tuple[list[str], bool]:
    """The sentences ``cap_sentences`` keeps of ``sentences``, and whether a loop or the
    ``limit`` ended the answer (no later sentence can be kept)."""
    kept: list[str] = []
    seen: list[set[str]] = []
    for sentence in sentences:
        if (cut := loop_start(sentence)) is not None:  # the rest of the answer is the loop
            if sentence[:cut].strip():
                kept.append(sentence[:cut].strip())
            return kept, True
        words = set(_key(sentence).split())
        if not words or any(_jaccard(words, other) >= NEAR_REPEAT for other in seen):
            continue
        seen.append(words)
        kept.append(sentence)
        if len(kept) == limit:
            return kept, True
    return kept, False


def _finished(sentence: str) -> bool:
    return bool(re.search(r"[.!?][\])\"']*$", sentence))


def _join_capped(kept: list[str], ellipsis: bool = True) -> str:
    words = " ".join(kept).split()
    more = ellipsis and len(words) > MAX_ANSWER_WORDS
    return " ".join(words[:MAX_ANSWER_WORDS]) + (" …" if more else "")


def cap_sentences(text: str, limit: int = MAX_ANSWER_SENTENCES) -> str:
    """The first ``limit`` distinct sentences of a generated answer, at most
    ``MAX_ANSWER_WORDS`` words; a loop of a few words is cut where it starts (see
    ``loop_start``), a sentence that (nearly) repeats an earlier one is dropped, and so is an
    unfinished last sentence when a finished one comes before it."""
    kept, _ = _kept(split_sentences(text), limit)
    if len(kept) > 1 and not _finished(kept[-1]):
        kept.pop()
    return _join_capped(kept)


def check_answer(text: str, shown: set[int]) -> tuple[str, list[int]]:
    """The post-check of a generated answer: ``cap_sentences``, then
    ``drop_unshown_citations``; returns the answer and every number the model cited that was
    not shown, also those in text the cap removed (a lone leading "[4]", a loop)."""
    answer, _ = drop_unshown_citations(cap_sentences(text), shown)
    return answer, sorted(cited_numbers(text) - shown)


def settled_answer(text: str, shown: set[int], limit: int = MAX_ANSWER_SENTENCES) -> str:
    """The start of ``check_answer(text + more, shown)`` for any ``more`` the model may still
    generate: what can be shown while the answer streams, never to be taken back.

    Only whole words count (the last one may still grow, e.g. ``[1`` into ``[12]``), and a
    sentence only once the next one has begun. Such finished sentences are checked as the
    whole answer will be, except that the last one kept waits while it lacks its full stop
    (it is dropped if the answer ends there). The first sentence to be kept streams word by
    word (it cannot repeat an earlier one, nor be dropped as unfinished), holding back its
    last words while they could still start a loop (at most ``LOOP_DISTINCT`` different
    words)."""
    sentences = split_sentences(re.sub(r"\s*\S*$", "", text))  # whole words only
    growing = sentences.pop() if sentences else ""
    kept, ended = _kept(sentences, limit)
    if len(kept) > 1 and not _finished(kept[-1]):
        kept.pop()  # kept if another sentence follows, dropped if the answer ends here
    elif not kept and not ended and growing:
        cut = loop_start(growing)
        first = growing[:cut].strip() if cut is not None else _loop_safe_start(growing)
        kept = [first] if _key(first) else []  # a sentence of no words is not kept
    return drop_unshown_citations(_join_capped(kept, ellipsis=False), shown)[0]


def _loop_safe_start(sentence: str) -> str:
    """The words of a growing sentence that no loop found later can cut: those before the
    last run of words (citations aside) with at most ``LOOP_DISTINCT`` different ones."""
    words = _words(sentence)
    start = len(sentence)
    for i in range(len(words) - 1, -1, -1):
        if len({w for _, w in words[i:]}) > LOOP_DISTINCT:
            break
        start = words[i][0]
    return sentence[:start].strip()


def drop_unshown_citations(text: str, shown: set[int]) -> tuple[str, list[int]]:
    """``text`` without the citations ``[n]`` whose ``n`` is not in ``shown``, and those
    numbers (sorted, once each)."""
    invalid = sorted({int(n) for n in _CITE.findall(text)} - shown)

    def keep(m: re.Match[str]) -> str:
        return m.group(0) if int(m.group(1)) in shown else ""

    return _CITE.sub(keep, text).strip(), invalid


def cited_numbers(text: str) -> set[int]:
    """The passage numbers an answer refers to, e.g. {1, 3} for "... [1] ... [3]"."""
    return {int(m) for m in _CITE.findall(text)}
