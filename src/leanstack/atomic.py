"""Crash-safe file writes (a temporary name beside the target, then a rename) and JSON reads
that fail in one line."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from leanstack.errors import LeanstackError

T = TypeVar("T")


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a temp file beside ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these files are meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj: Any, indent: int = 1) -> Path:
    """Write ``obj`` as indented JSON, atomically (it is serialised before any file is made)."""
    return write_bytes(path, (json.dumps(obj, indent=indent) + "\n").encode())


def write_npz(path: str | Path, arrays: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write ``arrays`` and a JSON ``meta`` entry as one compressed .npz, atomically."""
    import io

    import numpy as np

    buf = io.BytesIO()
    np.savez_compressed(buf, meta=np.array(json.dumps(meta)), **arrays)
    return write_bytes(path, buf.getvalue())


def read_json(path: str | Path, parse: Callable[[Any], T], what: str, how_to_make: str) -> T:
    """``parse`` the JSON in ``path``; a missing or malformed file is one LeanstackError naming
    ``what`` it should have been and ``how_to_make`` one."""
    path = Path(path)
    if not path.is_file():
        raise LeanstackError(f"{path}: no such {what} — make one with {how_to_make}")
    try:
        return parse(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as e:
        raise LeanstackError(f"{path}: not {_article(what)} {what} ({e!r}) — make one with "
                             f"{how_to_make}") from None


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"
