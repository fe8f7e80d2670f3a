"""The ChipExpert assistant: retrieve the top-k passages, number them [1]..[k], and answer.

Two ways to answer (``mode``): *extractive* quotes the passages' sentences that best match the
question, each with its citation (``extractive.py``); *generative* puts the passages into the
prompt and lets the model answer briefly, citing them as [n]; its answer is cut to a few
distinct sentences and citations of passages that were not shown are taken out
(``grounding.py``). *auto* (the default) is extractive for a small local model, whose own
answers are not reliable, and generative otherwise.

``ask(..., on_text=print_piece)`` streams the answer: a generated one as the model writes it,
but only text the post-check is sure to keep (``grounding.settled_answer``: whole words, no
citation of a passage that was not shown, no sentence that could still be dropped); the
pieces together are exactly the final answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from leanstack.chipexpert.extractive import Passage, extract_answer
from leanstack.chipexpert.generators import BundledGenerator, Generator, make_generator
from leanstack.chipexpert.grounding import check_answer, cited_numbers, settled_answer
from leanstack.errors import LeanstackError

if TYPE_CHECKING:
    from leanstack.chipexpert.retrieval import Retriever

SYSTEM_PROMPT = ("You are ChipExpert, an assistant for integrated-circuit design and EDA tools "
                 "(Verilog, yosys, Icarus Verilog, Verilator, ngspice).")
RAG_INSTRUCTION = ("Answer in one or two sentences using the documentation, citing it as [1], "
                   "[2], ...")
MODES = ("auto", "extractive", "generative")
NO_EXTRACT = "None of the passages found has a sentence that answers this; see them below."
NO_ANSWER = "The model gave no usable answer (empty or a loop); see the passages below."


@dataclass
class Citation:
    """A passage given to the model; ``cited`` is True when the answer refers to it as [n]."""

    n: int
    source: str
    section: str
    text: str
    score: float
    cited: bool = False


@dataclass
class Answer:
    """The model's answer, the passages it was given and how long each step took."""

    answer: str
    citations: list[Citation]
    latency_s: float
    retrieval_s: float = 0.0
    generation_s: float = 0.0
    mode: str = "generative"
    invalid_citations: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready: {answer, mode, citations: [{n, source, section, text, score, cited}],
        invalid_citations (numbers the model cited that were not shown, anywhere in its
        output; none of them is in the answer), latency_s, retrieval_s, generation_s}."""
        return {"answer": self.answer, "mode": self.mode,
                "citations": [asdict(c) for c in self.citations],
                "invalid_citations": list(self.invalid_citations),
                "latency_s": round(self.latency_s, 4), "retrieval_s": round(self.retrieval_s, 4),
                "generation_s": round(self.generation_s, 4)}


def format_passages(citations: list[Citation]) -> str:
    """The passages as the prompt shows them: ``[n]`` then the text. Source and section stay
    out of the prompt (a 135M model copies such header lines instead of answering); the
    citations list carries them to the reader."""
    return "\n\n".join(f"[{c.n}] {c.text}" for c in citations)


class Assistant:
    """Answers questions with a ``Generator``; with a ``Retriever`` the top ``k`` passages are
    quoted or go into the prompt, and come back as citations (retriever None: the model alone).
    ``mode`` is the default way to answer (see the module docstring)."""

    def __init__(self, generator: Generator, retriever: Retriever | None, k: int = 3,
                 mode: str = "auto") -> None:
        if k < 1:
            raise LeanstackError(f"k must be at least 1 (got {k})")
        self.generator = generator
        self.retriever = retriever
        self.k = k
        self.mode = mode
        self.resolve_mode(mode)  # fail at start-up, not on the first question

    def resolve_mode(self, mode: str | None = None) -> str:
        """``extractive`` or ``generative`` for ``mode`` (default: the assistant's): auto is
        extractive when there is a knowledge base and the generator is small (``small = True``,
        as the local generator sets for models under a billion parameters)."""
        mode = mode or self.mode
        if mode not in MODES:
            raise LeanstackError(f"unknown answer mode {mode!r}; use one of {', '.join(MODES)}")
        if mode == "auto":
            small = bool(getattr(self.generator, "small", False))
            return "extractive" if small and self.retriever is not None else "generative"
        if mode == "extractive" and self.retriever is None:
            raise LeanstackError("extractive answers quote the knowledge base, and there is none "
                                 "here; build it with 'leanstack chip corpus build' or use "
                                 "--mode generative")
        return mode

    def retrieve(self, question: str) -> list[Citation]:
        """The top-k passages for ``question`` as numbered citations (none without a retriever)."""
        if not question.strip():
            raise LeanstackError("the question is empty; ask something")
        if self.retriever is None:
            return []
        hits = self.retriever.search(question, k=self.k)
        return [Citation(n, h.source, h.section, h.text, h.score) for n, h in enumerate(hits, 1)]

    def messages_for(self, question: str, citations: list[Citation]) -> list[dict[str, str]]:
        """The chat messages sent to the model for ``question`` with these passages: the
        numbered passages first, then the question and the instruction (on ChipICD-Bench's EDA
        open items this order scored 0.31 against 0.24 with the question first)."""
        if not citations:
            user = f"{question.strip()}\nAnswer briefly."
        else:
            user = (f"Documentation:\n{format_passages(citations)}\n\n"
                    f"Question: {question.strip()}\n{RAG_INSTRUCTION}")
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]

    def context_messages(self, question: str) -> tuple[list[dict[str, str]], list[Citation]]:
        """The prompt ``ask`` would send for ``question`` and the passages in it."""
        citations = self.retrieve(question)
        return self.messages_for(question, citations), citations

    def ask(self, question: str, max_new_tokens: int = 256, mode: str | None = None,
            on_text: Callable[[str], None] | None = None) -> Answer:
        """Retrieve, answer (quoting, or generating greedily and post-checking) and return the
        answer with its citations and timings; ``mode`` overrides the assistant's.
        ``on_text(piece)`` receives the answer as it settles (see the module docstring)."""
        mode = self.resolve_mode(mode)
        t0 = time.perf_counter()
        citations = self.retrieve(question)
        t1 = time.perf_counter()
        invalid: list[int] = []
        if mode == "extractive":
            assert self.retriever is not None  # resolve_mode saw to it
            passages = [Passage(c.n, c.section, c.text) for c in citations]
            text = extract_answer(question, passages, self.retriever.embed) or NO_EXTRACT
            if on_text:
                on_text(text)
        else:
            text, invalid = self._generate(self.messages_for(question, citations),
                                           {c.n for c in citations}, max_new_tokens, on_text)
        t2 = time.perf_counter()
        used = cited_numbers(text)
        for c in citations:
            c.cited = c.n in used
        return Answer(text, citations, t2 - t0, retrieval_s=t1 - t0, generation_s=t2 - t1,
                      mode=mode, invalid_citations=invalid)

    def _generate(self, messages: list[dict[str, str]], shown: set[int], max_new_tokens: int,
                  on_text: Callable[[str], None] | None) -> tuple[str, list[int]]:
        """The generated answer after its post-check and the invalid citations taken out;
        ``on_text`` gets the settled pieces (all at the end if the generator cannot stream)."""
        raw, sent = "", ""

        def grow(piece: str) -> None:
            nonlocal raw, sent
            raw += piece
            settled = settled_answer(raw, shown)
            if len(settled) > len(sent) and settled.startswith(sent) and on_text:
                on_text(settled[len(sent):])
                sent = settled
        if on_text and getattr(self.generator, "streams", False):
            full = self.generator.generate(messages, max_new_tokens, prose=True, on_text=grow)
        else:
            full = self.generator.generate(messages, max_new_tokens, prose=True)
        text, invalid = check_answer(full, shown)
        text = text or NO_ANSWER
        if on_text:
            # settled_answer guarantees a start of the final text; should that ever fail, the
            # whole checked answer follows on a new line rather than a wrong continuation
            rest = text[len(sent):] if text.startswith(sent) else f"\n{text}"
            if rest:
                on_text(rest)
        return text, invalid


def load_retriever(directory: Path | None = None) -> Retriever:
    """The knowledge base's retriever; a missing one is a one-line error saying how to build it."""
    from leanstack.chipexpert.corpus import CORPUS_FILE
    from leanstack.chipexpert.retrieval import Retriever
    from leanstack.chipexpert.store import default_dir

    directory = directory or default_dir()
    if not (directory / CORPUS_FILE).is_file():
        raise LeanstackError(f"no knowledge base in {directory}; run 'leanstack chip corpus "
                             "build' first (or pass --no-rag)")
    return Retriever.load(directory)


def make_assistant(model: str | None = None, endpoint: str | None = None, rag: bool = True,
                   k: int = 3, directory: Path | None = None, mode: str = "auto",
                   lazy: bool = False) -> Assistant:
    """An assistant over the knowledge base in ``directory`` (default: the user cache dir);
    ``model``/``endpoint`` as in ``make_generator``; ``rag=False`` answers without retrieval;
    ``mode`` as in ``Assistant``; ``lazy`` loads the bundled model only when an answer needs
    it (a one-shot ``chip ask``), where a server wants it loaded up front."""
    if mode not in MODES:  # fail fast, before loading anything
        raise LeanstackError(f"unknown answer mode {mode!r}; use one of {', '.join(MODES)}")
    if mode == "extractive" and not rag:
        raise LeanstackError("--mode extractive quotes the knowledge base; drop --no-rag or use "
                             "--mode generative")
    retriever = load_retriever(directory) if rag else None  # fail fast, before loading a model
    if lazy and model is None and endpoint is None:
        return Assistant(BundledGenerator(), retriever, k, mode)
    return Assistant(make_generator(model, endpoint), retriever, k, mode)
