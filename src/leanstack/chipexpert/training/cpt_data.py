"""The continued-pre-training corpus (knowledge-base chunks with their headings, plus the
package text of ``ic_sources``) and the two held-out texts perplexity is measured on: an IC
text (ngspice's device notes, never put in the corpus) and a general one (the prose and manual
texts of LeanKV's test half)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

from leanstack.chipexpert.chunking import Chunk, clean
from leanstack.chipexpert.training.ic_sources import PackageFile, heldout_ic_file, read_text
from leanstack.chipexpert.training.schema import TextRecord

HELDOUT_IC_WORDS = 2500  # about 3,500 SmolLM2 tokens
GENERAL_KINDS = ("prose", "technical manual")


@dataclass(frozen=True)
class HeldOut:
    """A held-out text and where it comes from."""

    name: str
    text: str
    source: str
    licence: str


def kb_records(chunks: list[Chunk]) -> list[TextRecord]:
    """Knowledge-base chunks as CPT records: the section title, a blank line, the text."""
    return [TextRecord(f"kb-{c.id}", f"{c.section}\n\n{c.text}", c.source, c.license)
            for c in chunks]


def heldout_ic(file: PackageFile | None = None, words: int = HELDOUT_IC_WORDS) -> HeldOut:
    """The first ``words`` words (whole paragraphs) of the held-out IC document."""
    f = file or heldout_ic_file()
    kept, n = [], 0
    for para in clean(read_text(f.path)).split("\n\n"):
        kept.append(para)
        n += len(para.split())
        if n >= words:
            break
    return HeldOut("heldout-ic", "\n\n".join(kept) + "\n", f"{f.package}:{f.path}", f.licence)


def heldout_general() -> HeldOut:
    """LeanKV's test-half prose and technical-manual texts, joined (licences listed)."""
    texts = resources.files("leanstack.leankv") / "texts"
    manifest = json.loads((texts / "manifest.json").read_text())
    docs = [d for d in manifest["documents"]
            if d["split"] == "test" and d["kind"] in GENERAL_KINDS]
    body = "\n\n".join((texts / d["file"]).read_text().strip() for d in docs)
    return HeldOut("heldout-general", body + "\n",
                   "; ".join(f"leankv/texts/{d['file']} ({d['source']})" for d in docs),
                   "; ".join(f"{d['file']}: {d['licence']}" for d in docs))
