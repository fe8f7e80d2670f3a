"""Where the correct choice of each MCQ item sits: a deterministic, letter-balanced shuffle.

Items are written with the correct choice first. ``balanced_orders`` then places it at A, B, C
and D in turn (items taken in the order of the SHA-256 of their ids, so the letter does not
follow the domain or the numbering) and shuffles the three distractors with a generator seeded
by that hash. Each shipped item records its permutation as ``order``: ``order[p]`` is the
written position of the choice shown at letter ``p`` (0 = the correct one), so the shown
choices, the letter and the written order can each be recomputed from the other two.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable

LETTERS = "ABCD"


def _hash(item_id: str) -> int:
    return int(hashlib.sha256(item_id.encode()).hexdigest(), 16)


def balanced_orders(item_ids: Iterable[str]) -> dict[str, list[int]]:
    """Each id's permutation of its four written choices (correct one written first); the
    correct one's letters are balanced to within one over the ids."""
    orders = {}
    for rank, item_id in enumerate(sorted(item_ids, key=_hash)):
        distractors = [1, 2, 3]
        random.Random(_hash(item_id)).shuffle(distractors)
        distractors.insert(rank % len(LETTERS), 0)
        orders[item_id] = distractors
    return orders


def shown_choices(written: list[str], order: list[int]) -> tuple[list[str], str]:
    """The choices in shown order and the correct letter, from the written choices (correct
    first) and the item's ``order``."""
    return [written[i] for i in order], LETTERS[order.index(0)]
