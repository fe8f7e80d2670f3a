"""Long-context retrieval items: pass keys hidden in a real document, asked about afterwards.

A *passkey* item hides one key, a *multikey* item hides 2–4 keys (one per colour) at spread
depths. A *qa* item hides nothing: after two exact quotes from the document, it starts a third and
asks, by letting the model continue, for the words that follow (few-shot, from the document
itself). The context is a corpus document cut to the wanted length. By default the context is
prefilled (and so compressed) first and each question is fed afterwards as its own chunk
(question-agnostic: the cache cannot know what will be asked); ``question_aware`` prefills the
context and the question together.
"""

from __future__ import annotations

import copy
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from leanstack.errors import LeanstackError

COLOURS = ("red", "blue", "green", "yellow")
INTRO = "Below is a document. Pass keys are hidden in it; remember them.\n\n"
QA_INTRO = "Below is a document. Exact quotes from it follow.\n\n"
ANSWER_TOKENS = 8
QUOTE_WORDS = 6  # words quoted in a qa question
ANSWER_WORDS = 1  # words that answer it: the ones right after the quote
_PLAIN = re.compile(r"[!-~]{1,15}")  # a qa word: printable ASCII, short (fits ANSWER_TOKENS)
_TRAILING = "\"'.,;:!?"  # what a qa answer may gain or lose at its end


@dataclass(frozen=True)
class RetrievalItem:
    """A context with hidden keys and one question per key."""

    kind: str  # passkey | multikey | qa
    length: int  # context tokens (approximate)
    depths: tuple[float, ...]
    context: str
    questions: tuple[str, ...]
    answers: tuple[str, ...]


def _needle(colour: str | None, key: int) -> str:
    name = f"the {colour} pass key" if colour else "the pass key"
    return f"\n{name.capitalize()} is {key}. Remember it. {key} is {name}.\n"


def make_item(tokenizer: Any, haystack: str, length: int, depths: tuple[float, ...],
              rng: random.Random) -> RetrievalItem:
    """Hide ``len(depths)`` keys (1: a passkey item, 2–4: multikey) in the first ``length``
    tokens of ``haystack`` (repeated if shorter), at the given fractional depths."""
    if not 1 <= len(depths) <= len(COLOURS):
        raise LeanstackError(f"an item hides 1 to {len(COLOURS)} keys, got {len(depths)}")
    if length < 16:
        raise LeanstackError(f"retrieval context length {length} is too short: use >= 16 tokens")
    ids = tokenizer(haystack, add_special_tokens=False).input_ids
    if not ids:
        raise LeanstackError("retrieval haystack is empty: pass a document with text")
    ids = (ids * (length // len(ids) + 1))[:length]
    multi = len(depths) > 1
    colours = COLOURS[:len(depths)] if multi else (None,)
    keys = [rng.randint(10000, 99999) for _ in depths]
    cuts = sorted((int(d * length), c, k) for d, c, k in zip(depths, colours, keys, strict=True))
    parts, last = [], 0
    for cut, colour, key in cuts:
        parts += [tokenizer.decode(ids[last:cut]), _needle(colour, key)]
        last = cut
    parts.append(tokenizer.decode(ids[last:]))
    questions = tuple(f"\n\nWhat is the {c} pass key? The {c} pass key is" if c else
                      "\n\nWhat is the pass key? The pass key is" for c in colours)
    return RetrievalItem("multikey" if multi else "passkey", length, tuple(depths),
                         INTRO + "".join(parts), questions, tuple(str(k) for k in keys))


def _words_after(text: str, depth: float) -> tuple[str, str]:
    """(a quote of QUOTE_WORDS words starting near ``depth`` of ``text``, the ANSWER_WORDS
    words after it), the quote unique in ``text``; whitespace inside both is single spaces."""
    words = list(re.finditer(r"\S+", text))
    span = QUOTE_WORDS + ANSWER_WORDS
    if len(words) < 3 * span:
        raise LeanstackError(f"a qa item needs a context of at least {3 * span} words, got "
                             f"{len(words)}: use a longer retrieval length")
    start = min(int(depth * len(words)), len(words) - span)
    for i in (*range(start, len(words) - span + 1), *range(start - 1, -1, -1)):
        quote = text[words[i].start():words[i + QUOTE_WORDS - 1].end()]
        if all(_PLAIN.fullmatch(w.group()) for w in words[i:i + span]) and text.count(quote) == 1:
            answer = " ".join(w.group() for w in words[i + QUOTE_WORDS:i + span])
            return " ".join(quote.split()), answer
    raise LeanstackError("no quote in this context is unique: the document repeats itself; "
                         "use another document or a longer retrieval length")


def make_qa_item(tokenizer: Any, document: str, length: int, depths: tuple[float, float, float]
                 ) -> RetrievalItem:
    """A few-shot question about the first ``length`` tokens of ``document`` (all of it if
    shorter): which words follow the quotes at ``depths[0]`` and ``depths[1]`` (answered, as
    examples), then at ``depths[2]`` (asked). The context is the document alone, so the cache
    cannot know what will be asked."""
    ids = tokenizer(document, add_special_tokens=False).input_ids
    if not ids:
        raise LeanstackError("qa document is empty: pass a document with text")
    context = tokenizer.decode(ids[:length])  # never repeated: its quotes must be unique
    pairs = [_words_after(context, d) for d in depths]
    shots = "".join(f'"{q} {a}"\n' for q, a in pairs[:-1])
    question = f'\n\nExact quotes from the document above:\n{shots}"{pairs[-1][0]}'
    return RetrievalItem("qa", length, tuple(depths), QA_INTRO + context, (question,),
                         (pairs[-1][1],))


def _greedy(model: Any, cache: Any, ids: torch.Tensor, steps: int) -> list[int]:
    """Feed ``ids`` through ``cache``, then ``steps`` greedy tokens one at a time."""
    out: list[int] = []
    logits = model(ids, cache=cache).logits[:, -1]
    for i in range(steps):
        nxt = int(logits.argmax(-1))
        out.append(nxt)
        if i + 1 < steps:
            logits = model(torch.tensor([[nxt]], device=ids.device), cache=cache).logits[:, -1]
    return out


def _copy_or_prefill(cache: Any, prefill: Callable[[], Any]) -> Any:
    """A copy of a prefilled cache for one question; caches whose tensors cannot be copied
    (quanto's quantized tensors) are prefilled again, which stores the same context."""
    try:
        return copy.deepcopy(cache)
    except RuntimeError:
        return prefill()


def recalled(kind: str, answer: str, said: str) -> bool:
    """Whether ``said`` gives ``answer``: a pass key anywhere in it, a qa item's words as the
    first words said (whitespace, closing quotes and trailing punctuation aside)."""
    if kind == "qa":
        want = [w.rstrip(_TRAILING) for w in answer.split()]
        return [w.rstrip(_TRAILING) for w in said.split()[:len(want)]] == want
    return answer in said


def answer_item(model: Any, tokenizer: Any, item: RetrievalItem,
                make_cache: Callable[[], Any], question_aware: bool = False) -> list[bool]:
    """Whether each of ``item``'s keys is recalled through caches from ``make_cache``."""
    enc = tokenizer(item.context, return_tensors="pt").input_ids.to(model.device)
    hits = []
    def prefill() -> Any:
        cache = make_cache()
        model(enc, cache=cache)  # the context is stored (and compressed) first
        return cache

    with torch.no_grad():
        prefilled = None if question_aware else prefill()
        for question, key in zip(item.questions, item.answers, strict=True):
            q = tokenizer(question, add_special_tokens=False,
                          return_tensors="pt").input_ids.to(model.device)
            if question_aware:
                got = _greedy(model, make_cache(), torch.cat([enc, q], 1), ANSWER_TOKENS)
            else:
                cache = prefilled if len(item.questions) == 1 else _copy_or_prefill(prefilled,
                                                                                     prefill)
                got = _greedy(model, cache, q, ANSWER_TOKENS)
            hits.append(recalled(item.kind, key, tokenizer.decode(got, skip_special_tokens=True)))
    return hits
