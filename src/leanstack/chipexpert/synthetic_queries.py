"""Synthetic training queries for the question encoder, each paired with the chunk that answers it.

Four kinds, as ChipNeMo made its retriever's training data from the corpus itself:

* ``title``: a section's title (without its number; for a yosys command, its one-line purpose),
  for the section's first chunk;
* ``cloze``: one sentence of a chunk (inverse cloze);
* ``option``: from the option definitions of command help and man pages (``-o file`` followed
  by what it does, ``--foo=BAR  description``, yosys ``-top <module>``): "what does the -o
  option of yosys do?" and the description asked as a task ("how do I write the design to
  the specified file in yosys?");
* ``model``: one question per sampled chunk written by the local model (SmolLM2-135M-Instruct
  through ``leanstack.llm``), greedy, filtered (no question, too short or long, a copy of the
  chunk, a question about "the passage"). Generation is slow on a CPU, so the answers are
  cached in ``<knowledge base>/models/synthetic_queries.jsonl`` keyed by chunk id and model
  name; a rerun generates only for chunks not in the cache.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from leanstack.chipexpert.chunking import Chunk
from leanstack.chipexpert.store import read_jsonl, write_jsonl
from leanstack.errors import LeanstackError

QUESTION_MODEL = "SmolLM2-135M-Instruct"
CACHE_FILE = Path("models") / "synthetic_queries.jsonl"
GENERATION_BATCH = 8
MAX_QUESTION_TOKENS = 40
PROMPT = ("Documentation of {tool}, section \"{section}\":\n\n{text}\n\nWrite one short question "
          "that an engineer would ask and that this text answers. Reply with the question only.")

Query = tuple[str, int, str]  # (query, chunk row, kind)
WriteQuestions = Callable[[list[Chunk]], list[str]]

# an option token: -o, --output=FILE, -gno-xtypes, -fst|-fst-speed (alternatives split later)
_FLAG = re.compile(r"-{1,2}[A-Za-z][\w+.\-]*(=\S+)?[,|]?$")
# an argument written as one: <module>, [file], FILE, TERM
_ARG = re.compile(r"(<[^>]+>|\[[^\]]+\]|[A-Z][A-Z_]+),?$")
# first words of a description that is already a task ("Enable ...", "write the design ...")
_VERBS = frozenset((
    "add", "allow", "annotate", "append", "assume", "build", "change", "check", "compile",
    "create", "define", "disable", "display", "do", "dump", "enable", "execute", "expand",
    "export", "flatten", "generate", "give", "ignore", "import", "include", "keep", "load",
    "make", "map", "mark", "merge", "only", "optimize", "output", "overwrite", "perform",
    "preprocess", "print", "produce", "read", "remove", "rename", "replace", "report", "reset",
    "resolve", "run", "save", "select", "set", "show", "skip", "specify", "split", "start",
    "stop", "suppress", "switch", "treat", "turn", "use", "write"))
# replies about the prompt rather than the subject, and chat filler
_ABOUT_THE_TEXT = re.compile(
    r"\b(passage|text|the above|section|document|documentation|context|author|this "
    r"example|the code|this question|the answer|great question|fascinating|happy to|"
    r"help you)\b|\d+\.\d+\.\d", re.I)


def title_query(section: str) -> str:
    """A section title as a query: numbering dropped; for ``cmd -- what it does`` the part
    after the dashes."""
    title = section.split(" -- ", 1)[1] if " -- " in section else section
    return re.sub(r"^(Chapter\s+)?[\d.]+\s+", "", title).strip()


def prose_sentences(text: str) -> list[str]:
    """Sentences of six to forty words (prose, not table cells or code)."""
    flat = re.sub(r"\s+", " ", text)
    return [s for s in re.split(r"(?<=[.!?])\s+", flat) if 6 <= len(s.split()) <= 40]


def title_queries(chunks: list[Chunk]) -> list[Query]:
    """Every section's title (two words or more) for the section's first chunk."""
    out, seen = [], set()
    for i, c in enumerate(chunks):
        if (c.source, c.section) not in seen:
            seen.add((c.source, c.section))
            if len(title_query(c.section).split()) >= 2:
                out.append((title_query(c.section), i, "title"))
    return out


def cloze_queries(chunks: list[Chunk], count: int, rng: random.Random) -> list[Query]:
    """One prose sentence each of up to ``count`` randomly chosen chunks."""
    out: list[Query] = []
    order = list(range(len(chunks)))
    rng.shuffle(order)
    for i in order:
        if len(out) >= count:
            break
        if sentences := prose_sentences(chunks[i].text):
            out.append((rng.choice(sentences), i, "cloze"))
    return out


@dataclass(frozen=True)
class Option:
    """A command-line option as its help text defines it."""

    flags: tuple[str, ...]  # e.g. ("-o", "--output")
    description: str  # its first sentence


def _is_option_line(line: str) -> bool:
    first = line.split(maxsplit=1)[0] if line.strip() else ""
    return bool(_FLAG.match(first))


def _first_sentence(text: str) -> str:
    flat = " ".join(text.split())
    return re.split(r"(?<=[.!?])\s+|;\s", flat, maxsplit=1)[0].rstrip(".:; ")


def _option_head(tokens: list[str]) -> tuple[list[str], int]:
    """The flags at the start of ``tokens`` and how many tokens the head (flags, their
    arguments, "or") takes. An argument is written as one (``<x>``, ``[x]``, ``FILE``) or is a
    plain word followed by another spelling of the option (``-o outfile or --output=...``)."""
    flags, used = [], 0
    for n, tok in enumerate(tokens):
        if _FLAG.match(tok) or ("|" in tok and tok.startswith("-")):
            flags += [f.split("=")[0] for f in re.split(r"[|,]", tok)
                      if re.match(r"-{1,2}[A-Za-z]", f)]
        elif not (_ARG.match(tok) or tok in ("or", "|") or
                  n + 1 < len(tokens) and tokens[n + 1] in ("or", "|")):
            break
        used += 1
    return flags, used


def extract_options(text: str) -> list[Option]:
    """The options a help or man-page text defines: a line starting with the option(s), its
    description either after them on the same line or on the next lines (up to a blank line
    or the next option)."""
    lines = text.splitlines()
    out = []
    for n, line in enumerate(lines):
        if not _is_option_line(line):
            continue
        tokens = line.split()
        flags, used = _option_head(tokens)
        rest = tokens[used:]
        if len(rest) <= 1 and not any(t[:1].isupper() for t in rest):
            description = []  # "-o outfile": the description follows on the next lines
            for nxt in lines[n + 1:]:
                if not nxt.strip() or _is_option_line(nxt):
                    break
                description.append(nxt)
            words = " ".join(description)
        else:
            words = " ".join(rest)
        sentence = _first_sentence(words)
        if flags and 3 <= len(sentence.split()) <= 30:
            out.append(Option(tuple(dict.fromkeys(flags)), sentence))
    return out


def command_name(chunk: Chunk) -> str | None:
    """The command a chunk's options belong to: the yosys command of a ``yosys-help``
    section, the program of a man page (``man-iverilog``), ngspice for its manual."""
    if chunk.source == "yosys-help":
        return "yosys " + chunk.section.split(" -- ", 1)[0].split()[0]
    if chunk.source.startswith("man-"):
        return chunk.source.removeprefix("man-")
    if chunk.source == "ngspice-manual":
        return "ngspice"
    return None


def option_query_texts(option: Option, command: str) -> list[str]:
    """The two queries one option gives: what the flag does, and its description as a task."""
    desc = re.sub(r"\s*\((default|e\.g\.)[^)]*\)", "", option.description).strip()
    negated = re.match(r"(do not|don't)\s+(.*)", desc, re.I)
    first, _, tail = desc.partition(" ")
    verb = first.lower()
    verb = (verb if verb in _VERBS else verb[:-3] + "y" if verb.endswith("ies")
            else verb[:-1] if verb.endswith("s") else "")
    if negated:
        task = f"how do I make {command} not {negated.group(2)}?"
    elif verb in _VERBS:
        task = f"how do I {verb} {tail} in {command}?"
    else:
        task = f"which {command} option gives {desc[0].lower() + desc[1:]}?"
    return [f"what does the {option.flags[0]} option of {command} do?", task]


def option_queries(chunks: list[Chunk]) -> list[Query]:
    """Two queries for every option defined in a chunk of command help or a man page."""
    out = []
    for i, c in enumerate(chunks):
        command = command_name(c)
        if command is None:
            continue
        for option in extract_options(c.text):
            out += [(q, i, "option") for q in option_query_texts(option, command)]
    return out


def clean_model_question(raw: str, chunk_text: str) -> str | None:
    """The question in a model's reply (its first line with a question mark), or None when
    the reply is unusable: no question, under 4 or over 30 words, about "the text" rather
    than the subject, chat filler, or a copy of the chunk (most of its word trigrams are in
    the chunk)."""
    line = next((ln for ln in raw.splitlines() if "?" in ln), "")
    line = re.sub(r"^(question\s*\d*\s*:|q:|\d+[.)])\s*", "", line, flags=re.I).strip(" \"'*")
    if "?" not in line or line[:1].islower():
        return None
    question = line[:line.index("?") + 1]
    words = question.split()
    if not 4 <= len(words) <= 30 or _ABOUT_THE_TEXT.search(question):
        return None
    norm = re.findall(r"\w+", question.lower())
    chunk_words = re.findall(r"\w+", chunk_text.lower())
    grams = {tuple(norm[k:k + 3]) for k in range(len(norm) - 2)}
    chunk_grams = {tuple(chunk_words[k:k + 3]) for k in range(len(chunk_words) - 2)}
    if grams and len(grams & chunk_grams) >= 0.8 * len(grams):
        return None
    return question


def local_question_writer() -> WriteQuestions:
    """Write one question per chunk with the bundled local model (greedy, a batch at a time)."""
    from leanstack.llm import load_model
    from leanstack.llm.chat import generate_text

    loaded = load_model()

    def write(batch: list[Chunk]) -> list[str]:
        prompts = [PROMPT.format(tool=c.source, section=c.section, text=c.text) for c in batch]
        return generate_text(loaded, prompts, max_new_tokens=MAX_QUESTION_TOKENS)
    return write


def _read_cache(path: Path) -> dict[tuple[str, str], dict]:
    if not path.exists():
        return {}
    cache = {}
    for n, r in enumerate(read_jsonl(path), 1):
        if not (isinstance(r, dict) and isinstance(r.get("chunk"), str)
                and isinstance(r.get("model"), str) and isinstance(r.get("raw"), str)):
            raise LeanstackError(f"{path}: record {n} is not {{chunk, model, raw, question}}; "
                                 "delete the file to write the questions again")
        cache[(r["chunk"], r["model"])] = r
    return cache


def model_queries(chunks: list[Chunk], count: int, cache_path: Path, rng: random.Random,
                  write: WriteQuestions | None = None, model_name: str = QUESTION_MODEL,
                  on_progress: Callable[[int, int], None] | None = None) -> list[Query]:
    """Model-written questions for ``count`` randomly chosen chunks (those the filter keeps).
    Replies already in ``cache_path`` for the same chunk and model are reused; new ones are
    added to it (rewritten atomically after every batch); a record keeps the raw reply, which
    is filtered again on every use, and the question the filter kept when it was written.
    ``write`` turns a batch of chunks into raw replies (default: the local model, loaded only
    when something is missing)."""
    if count <= 0:
        return []
    cache = _read_cache(cache_path)
    sample = rng.sample(range(len(chunks)), min(count, len(chunks)))
    missing = [i for i in sample if (chunks[i].id, model_name) not in cache]
    if missing and write is None:
        write = local_question_writer()
    for start in range(0, len(missing), GENERATION_BATCH):
        batch = [chunks[i] for i in missing[start:start + GENERATION_BATCH]]
        replies = write(batch)
        for c, raw in zip(batch, replies, strict=True):
            cache[(c.id, model_name)] = {"chunk": c.id, "model": model_name, "raw": raw,
                                         "question": clean_model_question(raw, c.text)}
        write_jsonl(cache_path, cache.values())
        if on_progress:
            on_progress(min(start + GENERATION_BATCH, len(missing)), len(missing))
    out = []
    for i in sample:
        question = clean_model_question(cache[(chunks[i].id, model_name)]["raw"], chunks[i].text)
        if question:
            out.append((question, i, "model"))
    return out


def synthetic_queries(chunks: list[Chunk], counts: dict[str, int], seed: int = 0,
                      cache_path: Path | None = None, write: WriteQuestions | None = None,
                      on_progress: Callable[[int, int], None] | None = None) -> list[Query]:
    """Up to ``counts[kind]`` queries of each kind (``title``, ``cloze``, ``option``,
    ``model``), each kind drawn with its own seeded random order so that changing one count
    leaves the others' queries as they were. ``model`` needs ``cache_path``."""
    unknown = set(counts) - {"title", "cloze", "option", "model"}
    if unknown:
        raise LeanstackError(f"unknown synthetic query kinds {sorted(unknown)}; "
                             "use title, cloze, option and model")
    out: list[Query] = []
    for kind, make in (("title", title_queries), ("option", option_queries)):
        queries = make(chunks)
        random.Random(f"{seed}:{kind}").shuffle(queries)
        out += queries[:counts.get(kind, 0)]
    out += cloze_queries(chunks, counts.get("cloze", 0), random.Random(f"{seed}:cloze"))
    if counts.get("model", 0) > 0:
        if cache_path is None:
            raise LeanstackError("model-written queries need a cache file (the knowledge "
                                 "base's models/ directory)")
        out += model_queries(chunks, counts["model"], cache_path,
                             random.Random(f"{seed}:model"), write, on_progress=on_progress)
    return out
