"""The comparisons a K-wise ranking implies, shared by every stage that learns from rankings (reward model, DPO).

A ranking row holds `responses` ordered best to worst and, optionally, `ties`: groups of 0-based positions of
adjacent responses the labeler found equally good, e.g. `"ties": [[1, 2]]` for "2nd and 3rd are as good as each
other". Tied responses are never compared with each other (no order is invented between them); they are still
compared with every response ranked above or below the group.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, Literal

PairSelection = Literal["all", "best_vs_rest", "best_vs_worst"]
PAIR_SELECTIONS: tuple[str, ...] = ("all", "best_vs_rest", "best_vs_worst")


def ties_problem(ties: Any, k: int) -> str | None:
    """Why `ties` is not a valid tie list for a ranking of `k` responses, or None (None and [] mean no ties)."""
    if ties is None:
        return None
    if not isinstance(ties, list):
        return f"'ties' must be a list of groups of positions, e.g. [[1, 2]], got {type(ties).__name__}"
    seen: set[int] = set()
    for group in ties:
        if not isinstance(group, list) or len(group) < 2 or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in group):
            return f"each tie group must be a list of at least two positions, got {group!r}"
        if sorted(group) != list(range(min(group), min(group) + len(group))):
            return f"a tie group holds adjacent positions only, got {group!r}"
        if min(group) < 0 or max(group) >= k:
            return f"tie group {group!r} names a position outside the {k} responses (positions are 0-based)"
        if seen & set(group):
            return f"position(s) {sorted(seen & set(group))} appear in two tie groups"
        seen |= set(group)
    if len(seen) == k and len(ties) == 1:
        return "every response is tied with every other: the ranking says nothing; skip the item instead"
    return None


def ranking_pairs(k: int, ties: Sequence[Sequence[int]] | None = None,
                  selection: PairSelection = "all") -> list[tuple[int, int]]:
    """(winner, loser) positions of the comparisons a ranking of `k` responses (best first) implies.

    `all`: every pair, C(k, 2) without ties (InstructGPT); `best_vs_rest`: the best response against each other one
    (k - 1 pairs); `best_vs_worst`: one pair. Pairs inside a tie group are left out; with a tie for first place,
    `best_vs_*` use every response of the top group as "best".
    """
    if k < 2:
        raise ValueError(f"a ranking needs at least two responses, got {k}")
    if selection not in PAIR_SELECTIONS:
        raise ValueError(f"pair selection must be one of {PAIR_SELECTIONS}, got {selection!r}")
    group_of = {i: g for g, group in enumerate(ties or ()) for i in group}
    tied = lambda i, j: i in group_of and group_of.get(j) == group_of[i]  # noqa: E731
    pairs = [(i, j) for i, j in itertools.combinations(range(k), 2) if not tied(i, j)]
    if selection == "all":
        return pairs
    top = {0} | ({i for i in group_of if group_of[i] == group_of[0]} if 0 in group_of else set())
    pairs = [(i, j) for i, j in pairs if i in top]
    if selection == "best_vs_worst":
        worst = {k - 1} | ({i for i in group_of if group_of[i] == group_of[k - 1]} if k - 1 in group_of else set())
        pairs = [(i, j) for i, j in pairs if j in worst]
    return pairs
