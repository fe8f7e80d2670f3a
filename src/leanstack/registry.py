"""Name -> ``"module:attribute"`` registries: the one loader that imports an entry when asked."""

from __future__ import annotations

import importlib
from typing import Any

from leanstack.errors import LeanstackError


def load_target(target: str, what: str) -> Any:
    """Import ``"module:attribute"`` and return the attribute; a missing module or attribute is
    a one-line error naming ``what`` was asked for."""
    module, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise LeanstackError(f"{what} is not available in this install ({e}) — check that "
                             f"'{module}' is installed") from None
