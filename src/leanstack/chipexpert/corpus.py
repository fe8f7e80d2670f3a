"""Build the knowledge base: read each source, chunk it, de-duplicate, write ``corpus.jsonl``.

Incremental: a source whose fingerprint is unchanged since the last build is not read again (its
chunks come from ``sources/<name>.jsonl``). A source that fails to read is reported and skipped.

Layout of the output directory::

    corpus.jsonl           the de-duplicated chunks: id, source, section, text, license
    manifest.json          per source: fingerprint, origin, licence, chunk count; dedup stats
    sources/<name>.*       each source's chunks before de-duplication and their fingerprint
                           (the incremental cache)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from leanstack.chipexpert import store
from leanstack.chipexpert.chunking import CHUNKER_VERSION, Chunk, chunk_sections
from leanstack.chipexpert.sources import Source
from leanstack.errors import LeanstackError

CORPUS_FILE = "corpus.jsonl"
MANIFEST_FILE = "manifest.json"


@dataclass
class SourceReport:
    """What happened to one source: ``built``, ``unchanged`` (cache reused) or ``failed``."""

    name: str
    status: str
    chunks: int = 0
    error: str = ""


@dataclass
class BuildReport:
    """The outcome of one ``build_corpus`` call."""

    out_dir: Path
    sources: list[SourceReport] = field(default_factory=list)
    chunks: int = 0
    duplicates: int = 0

    @property
    def failed(self) -> list[SourceReport]:
        """The sources that could not be read."""
        return [s for s in self.sources if s.status == "failed"]


def _source_chunks(src: Source, fingerprint: str, cache_dir: Path,
                   force: bool) -> tuple[list[Chunk], bool]:
    """The chunks of one source and whether they came from the cache. The cache of a source is
    ``<name>.jsonl`` plus ``<name>.fingerprint``, written after it; both must be present."""
    cache = cache_dir / f"{src.name}.jsonl"
    stamp = cache_dir / f"{src.name}.fingerprint"
    if not force and stamp.exists() and stamp.read_text() == fingerprint:
        try:
            return [Chunk(**r) for r in store.read_jsonl(cache)], True
        except (LeanstackError, TypeError):
            pass  # a damaged cache file is simply rebuilt
    chunks = chunk_sections(src.read(), src.name, src.license)
    if not chunks:
        raise LeanstackError(f"{src.name}: no text extracted; check the file is the right document")
    store.write_jsonl(cache, (c.to_json() for c in chunks))
    store.write_bytes(stamp, fingerprint.encode())
    return chunks, False


def build_corpus(out_dir: Path, sources: list[Source], *, force: bool = False,
                 on_source: Callable[[SourceReport], None] | None = None,
                 dedup_threshold: float = 0.8) -> BuildReport:
    """Build (or refresh) the corpus in ``out_dir`` from ``sources``; returns what happened."""
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise LeanstackError("two sources share a name; give each extra file a distinct name")
    out_dir.mkdir(parents=True, exist_ok=True)
    report = BuildReport(out_dir)
    all_chunks: list[Chunk] = []
    new_entries = {}
    for src in sources:
        try:
            fingerprint = f"{src.fingerprint()}:{CHUNKER_VERSION}"
            chunks, cached = _source_chunks(src, fingerprint, out_dir / "sources", force)
        except LeanstackError as e:
            rep = SourceReport(src.name, "failed", error=str(e))
        else:
            rep = SourceReport(src.name, "unchanged" if cached else "built", len(chunks))
            all_chunks.extend(chunks)
            new_entries[src.name] = {"fingerprint": fingerprint, "origin": src.origin,
                                     "license": src.license, "chunks": len(chunks)}
        report.sources.append(rep)
        if on_source:
            on_source(rep)
    if not all_chunks:
        raise LeanstackError("no source could be read; install the documentation with "
                             "scripts/system-deps.sh")
    from leanstack.chipexpert.dedup import deduplicate  # datasketch: slow to import, build only

    result = deduplicate(all_chunks, dedup_threshold)
    report.chunks, report.duplicates = len(result.kept), len(result.dropped)
    store.write_jsonl(out_dir / CORPUS_FILE, (c.to_json() for c in result.kept))
    store.write_json(out_dir / MANIFEST_FILE, {
        "sources": new_entries, "chunks": report.chunks, "duplicates_dropped": report.duplicates,
        "failed": {r.name: r.error for r in report.failed}})
    return report


def load_corpus(out_dir: Path) -> list[Chunk]:
    """The chunks of a built corpus."""
    path = out_dir / CORPUS_FILE
    if not path.exists():
        raise LeanstackError(f"no corpus in {out_dir}; run 'leanstack chip corpus build' first")
    try:
        return [Chunk(**r) for r in store.read_jsonl(path)]
    except TypeError as e:
        raise LeanstackError(f"{path}: records lack id/source/section/text/license; "
                             "rebuild with 'leanstack chip corpus build --force'") from e
