"""MinHash de-duplication: near copies go, distinct texts stay, the first copy wins."""

from __future__ import annotations

import pytest

from leanstack.chipexpert.chunking import Chunk, chunk_id
from leanstack.chipexpert.dedup import deduplicate

BASE = ("This pass identifies wires and cells that are unused and removes them. Other passes "
        "often remove cells but leave the wires in the design or reconnect the wires but leave "
        "the old cells in the design. This pass can be used to clean up after the passes that "
        "do the actual work of synthesis and optimisation on the netlist.")


def chunk(source: str, text: str) -> Chunk:
    return Chunk(chunk_id(source, "s", text), source, "s", text, "ISC")


def test_near_duplicate_is_dropped_and_points_at_the_kept_copy() -> None:
    first = chunk("manual", BASE)
    near = chunk("slides", BASE.replace("optimisation", "optimization"))
    other = chunk("manual", "The sta command performs static timing analysis using the "
                  "timing information in the cell library and prints the longest path found.")
    result = deduplicate([first, near, other])
    assert result.kept == [first, other]
    assert result.dropped == {near.id: first.id}


def test_rewritten_text_is_kept() -> None:
    a = chunk("a", BASE)
    b = chunk("b", "Unused wires and cells get deleted by this command; run it after the "
              "passes that do the real work, since they tend to leave old cells behind.")
    assert deduplicate([a, b]).kept == [a, b]


def test_bad_threshold_is_rejected() -> None:
    with pytest.raises(ValueError):
        deduplicate([], threshold=0)
