"""Where the built knowledge base lives, and crash-safe writes (temp name, then rename)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from leanstack.atomic import write_bytes
from leanstack.errors import LeanstackError


def default_dir() -> Path:
    """``$LEANSTACK_CHIP_DIR``, else ``$XDG_CACHE_HOME/leanstack/chip`` (``~/.cache``)."""
    if env := os.environ.get("LEANSTACK_CHIP_DIR"):
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "leanstack" / "chip"


def write_json(path: Path, obj: object) -> None:
    """Atomically write ``obj`` as indented JSON."""
    write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def write_jsonl(path: Path, records: Iterable[dict]) -> None:
    """Atomically write one JSON object per line."""
    write_bytes(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode())


def read_jsonl(path: Path) -> list[dict]:
    """Read a JSONL file; a bad line is a one-line error naming the file and line."""
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise LeanstackError(f"{path}: cannot read ({e.strerror}); build it first") from e
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise LeanstackError(f"{path}:{n}: not valid JSON ({e.msg}); fix or rebuild it") from e
    return records
