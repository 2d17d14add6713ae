"""Small, pure metrics for evaluating generations (no model loading, no torch needed).

* ``distinct_n``: diversity, unique n-grams / total n-grams over all responses.
* ``eos_fraction``: share of responses that finished (contain an EOS token) rather than hit the length limit.
* ``win_rate``: per-prompt comparison of two score lists (e.g. reward-model scores of policy vs. SFT baseline).
* ``mean_std``: mean and population standard deviation.
* ``markdown_table``: render result rows as a GitHub-markdown table.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any


def _tokens(response: Any) -> list:
    if isinstance(response, str):
        return response.split()
    return [int(t) if isinstance(t, numbers.Integral) else t for t in response]


def distinct_n(responses: Sequence[Sequence[int]] | Sequence[str], n: int) -> float:
    """Unique n-grams / total n-grams across all ``responses`` (distinct-n, Li et al. 2016).

    Responses are token-id sequences or strings (split on whitespace). n-grams never span two responses.
    Returns 0.0 when there are no n-grams at all (no responses, or all shorter than ``n``).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    unique: set[tuple] = set()
    total = 0
    for response in responses:
        tokens = _tokens(response)
        for i in range(len(tokens) - n + 1):
            unique.add(tuple(tokens[i : i + n]))
            total += 1
    return len(unique) / total if total else 0.0


def eos_fraction(responses_ids: Iterable[Iterable[int]], eos_token_id: int | Iterable[int]) -> float:
    """Fraction of responses that contain the EOS token (any of them, if a list of ids is given).

    Pass the generated part only, before padding, if the pad token equals EOS (otherwise every padded row counts).
    Returns 0.0 for no responses.
    """
    eos_ids = {int(eos_token_id)} if isinstance(eos_token_id, numbers.Integral) else {int(e) for e in eos_token_id}
    count = hits = 0
    for response in responses_ids:
        count += 1
        if any(int(t) in eos_ids for t in response):
            hits += 1
    return hits / count if count else 0.0


def win_rate(scores: Sequence[float], baseline_scores: Sequence[float]) -> float:
    """Share of prompts where ``scores[i] > baseline_scores[i]``; a tie counts as half a win."""
    if len(scores) != len(baseline_scores):
        raise ValueError(f"length mismatch: {len(scores)} scores vs {len(baseline_scores)} baseline scores")
    if len(scores) == 0:
        raise ValueError("win_rate of no scores")
    wins = 0.0
    for s, b in zip(scores, baseline_scores):
        s, b = float(s), float(b)
        if s > b:
            wins += 1.0
        elif s == b:
            wins += 0.5
    return wins / len(scores)


def mean_std(xs: Iterable[float]) -> tuple[float, float]:
    """(mean, population standard deviation) of ``xs``."""
    values = [float(x) for x in xs]
    if not values:
        raise ValueError("mean_std of no values")
    mean = math.fsum(values) / len(values)
    var = math.fsum((x - mean) ** 2 for x in values) / len(values)
    return mean, math.sqrt(var)


def _format_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, numbers.Integral):  # int, bool, numpy ints
        return str(value)
    if isinstance(value, numbers.Real):  # float, numpy floats
        return f"{float(value):.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """GitHub-markdown table of ``rows`` restricted to ``columns`` (in that order).

    Floats are written with 4 significant digits (``f"{x:.4g}"``), missing keys / None as empty cells, ``|`` in
    text escaped. No trailing newline.
    """
    lines = [
        "| " + " | ".join(columns) + " |",
        "| " + " | ".join("---" for _ in columns) + " |",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_format_cell(row.get(col)) for col in columns) + " |")
    return "\n".join(lines)
