"""Name -> ``"module:attribute"`` registries: the one loader that imports an entry when asked."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
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


def checked_options(what: str, factory: Callable[..., Any], opts: dict[str, Any]) -> dict[str, Any]:
    """``opts`` without the ones set to ``None`` (they keep the default); a name ``factory`` does
    not take is a one-line error naming ``what`` and the options it does take."""
    opts = {k: v for k, v in opts.items() if v is not None}
    accepted = inspect.signature(factory).parameters
    for k in opts:
        if k not in accepted:
            raise LeanstackError(f"{what} has no option '{k}' — it takes "
                                 f"{', '.join(accepted) or 'no options'}")
    return opts
