"""LeanKV: KV-cache compression with hetero-precision tiers, per-head sparsity, unified paging.

The public names are imported on first use, so ``leanstack --help`` does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LeanKVCache": "leanstack.leankv.cache",
    "LeanKVConfig": "leanstack.leankv.config",
    "PRESETS": "leanstack.leankv.config",
    "PagePool": "leanstack.leankv.pages",
    "PoolExhausted": "leanstack.leankv.pages",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'leanstack.leankv' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
