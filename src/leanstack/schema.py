"""File schemas: every JSON file leanstack reads back is checked against a pydantic model, and a
mismatch is one line naming the file, the first bad field and how to make a good file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from leanstack.errors import LeanstackError

M = TypeVar("M", bound=BaseModel)

Finite = Annotated[float, Field(allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0)]
PercentileKey = Literal["p50", "p90", "p95", "p99", "p99.9"]
"""An SLA percentile's name (``app.SLA_PERCENTILES`` as keys)."""


class FileModel(BaseModel):
    """Base of the file schemas: keys a newer version adds are kept, not refused."""

    model_config = ConfigDict(extra="allow")


def check(model: type[M], data: Any, source: str | Path, how_to_make: str) -> M:
    """``data`` validated as ``model``; the first problem is one LeanstackError naming
    ``source``, the field's path and ``how_to_make`` a good file."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "top level"
        got = "" if first["type"] == "missing" else f" (got {_short(first.get('input'))})"
        raise LeanstackError(f"{source}: {field}: {first['msg'].lower()}{got} — "
                             f"{how_to_make}") from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
