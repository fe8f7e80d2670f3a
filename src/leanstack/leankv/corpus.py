"""The LeanKV evaluation corpus: extracts of freely redistributable texts of different kinds
(prose, technical manuals, source code, questions and answers, lists, tables) shipped with the
package, split once into a *calibration* half (presets and thresholds are chosen on it) and a
*test* half (every reported number). ``texts/manifest.json`` records each extract's source and
licence."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

from leanstack.errors import LeanstackError

SPLITS = ("calibration", "test", "all")


@dataclass(frozen=True)
class Document:
    """One corpus extract."""

    name: str
    split: str
    kind: str
    source: str
    licence: str
    text: str


def _texts() -> resources.abc.Traversable:
    return resources.files("leanstack.leankv") / "texts"


def manifest() -> list[dict[str, str]]:
    """The manifest entries (name, split, kind, source, licence, extract, file)."""
    return json.loads((_texts() / "manifest.json").read_text(encoding="utf-8"))["documents"]


def documents(split: str = "test") -> list[Document]:
    """The documents of ``split`` (``calibration``, ``test`` or ``all``), in manifest order."""
    if split not in SPLITS:
        raise LeanstackError(f"unknown corpus split {split!r}: choose one of {', '.join(SPLITS)}")
    return [Document(e["name"], e["split"], e["kind"], e["source"], e["licence"],
                     (_texts() / e["file"]).read_text(encoding="utf-8"))
            for e in manifest() if split == "all" or e["split"] == split]
