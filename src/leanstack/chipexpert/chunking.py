"""Clean extracted text and cut each section into retrieval-sized chunks at paragraph boundaries."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import asdict, dataclass

from leanstack.chipexpert.extract import Section

MAX_WORDS = 100  # well inside the 256 word pieces all-MiniLM-L6-v2 reads, title included
MIN_WORDS = 8
# Part of every source's cache key: change it when chunking changes its output.
CHUNKER_VERSION = f"1-{MAX_WORDS}-{MIN_WORDS}"


@dataclass(frozen=True)
class Chunk:
    """One unit of the knowledge base, as stored in ``corpus.jsonl``."""

    id: str
    source: str
    section: str
    text: str
    license: str

    def to_json(self) -> dict[str, str]:
        """The JSONL record: id, source, section, text, license."""
        return asdict(self)


def clean(text: str) -> str:
    """Normalise unicode, join hyphenated line breaks, drop page numbers, squeeze spaces."""
    text = unicodedata.normalize("NFKC", text).replace("\r", "")
    text = re.sub(r"[^\S\n]+", " ", text)
    text = re.sub(r"(\w)[-\u2010]\n\s*(\w)", r"\1\2", text)
    lines = [ln.strip() for ln in text.split("\n")]
    running_head = r"\d{1,4}|CHAPTER \d+\..*|APPENDIX [A-Z]\..*"
    lines = [ln for ln in lines if not re.fullmatch(running_head, ln)]
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs; over-long ones split into MAX_WORDS windows."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        words = para.split()
        if len(words) <= MAX_WORDS:
            if words:
                out.append(para.strip())
            continue
        lines, cur, n = para.split("\n"), [], 0
        for line in lines:
            k = len(line.split())
            if cur and n + k > MAX_WORDS:
                out.append("\n".join(cur))
                cur, n = [], 0
            if k > MAX_WORDS:
                ws = line.split()
                out.extend(" ".join(ws[i:i + MAX_WORDS]) for i in range(0, len(ws), MAX_WORDS))
                continue
            cur.append(line)
            n += k
        if cur:
            out.append("\n".join(cur))
    return out


def chunk_id(source: str, section: str, text: str) -> str:
    """A content hash: the same text in the same place always gets the same id."""
    return hashlib.sha256(f"{source}\0{section}\0{text}".encode()).hexdigest()[:16]


def chunk_sections(sections: list[Section], source: str, license: str) -> list[Chunk]:
    """Cut every section into chunks of at most MAX_WORDS words, keeping paragraphs whole."""
    chunks: list[Chunk] = []
    for sec in sections:
        title = " ".join(clean(sec.title).split())
        if not title:
            continue
        pieces, cur, n = [], [], 0
        for para in _paragraphs(clean(sec.text)):
            k = len(para.split())
            if cur and n + k > MAX_WORDS:
                pieces.append("\n\n".join(cur))
                cur, n = [], 0
            cur.append(para)
            n += k
        if cur:
            pieces.append("\n\n".join(cur))
        # a short tail is merged into the piece before it rather than left on its own
        if len(pieces) > 1 and len(pieces[-1].split()) < MIN_WORDS * 3:
            pieces[-2:] = [pieces[-2] + "\n\n" + pieces[-1]]
        for text in pieces:
            if len(text.split()) >= MIN_WORDS:
                chunks.append(Chunk(chunk_id(source, title, text), source, title, text, license))
    return chunks


_NUMBERED = re.compile(r"(\d+(?:\.\d+)*)\.?\s+\S")


def heading_paths(chunks: list[Chunk]) -> dict[tuple[str, str], str]:
    """For each (source, section): the section title after the titles of its numbered parents,
    e.g. ``Independent Sources for Voltage or Current > 4.1.2 Sinusoidal``; sections without a
    number (tool help, man pages, slides) keep their own title."""
    numbered: dict[tuple[str, str], str] = {}
    for c in chunks:
        if m := _NUMBERED.match(c.section):
            numbered.setdefault((c.source, m.group(1)), c.section)
    paths = {}
    for c in chunks:
        key = (c.source, c.section)
        if key in paths:
            continue
        parents = []
        if m := _NUMBERED.match(c.section):
            parts = m.group(1).split(".")
            for depth in range(1, len(parts)):
                title = numbered.get((c.source, ".".join(parts[:depth])))
                if title:
                    parents.append(re.sub(r"^[\d.]+\s+", "", title))
        paths[key] = " > ".join([*parents, c.section])
    return paths
