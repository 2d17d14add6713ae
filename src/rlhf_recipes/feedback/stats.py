"""Progress and agreement of the labelers, from the label store's files.

Agreement is measured the way InstructGPT reports it (~72% between labelers): over the C(K,2) pairs of answers of
an item, the fraction that two rankings order the same way, averaged over the items both ranked (and, overall,
over every pair of labelers that overlap). Only the planned overlap items count (the first `overlap_labelers`
rankings of each, in file order), so a file written before quotas were enforced does not skew it. The same measure
against a gold ranking screens labelers.

Ties: each ranking says of a pair "x better", "y better" or "equally good" (a tie group). Two rankings score 1 on a
pair when they say the same thing, 0 when they order it opposite ways, and 1/2 when one ties it and the other
orders it (half agreement, as a tie counts half in a win rate).

Who sees what (`stats_html(stats, viewer)`): an admin (or anyone when the app has no accounts) sees every labeler;
a labeler sees the totals, their own row, their own agreement and their own skip reasons, never another labeler's
name or words. Every user-supplied string is HTML-escaped.
"""

from __future__ import annotations

import html
from collections import Counter
from itertools import combinations
from typing import Any

from .store import LabelStore


def _outcomes(order: list[int], ties: list[list[int]] | None) -> dict[tuple[int, int], int]:
    """(x, y) with x < y (answer indices) -> +1 if x ranks above y, -1 below, 0 tied."""
    position = {answer: p for p, answer in enumerate(order)}
    group = {p: g for g, members in enumerate(ties or ()) for p in members}
    out = {}
    for x, y in combinations(sorted(order), 2):
        px, py = position[x], position[y]
        tied = px in group and group.get(py) == group[px]
        out[(x, y)] = 0 if tied else (1 if px < py else -1)
    return out


def pairwise_agreement(a: list[int], b: list[int], ties_a: list[list[int]] | None = None,
                       ties_b: list[list[int]] | None = None) -> float:
    """Agreement of rankings `a` and `b` (best first, same answers; optional tie groups of positions) over the
    C(K,2) answer pairs: 1 per pair judged alike, 0 per pair ordered oppositely, 1/2 where only one ties it."""
    if sorted(a) != sorted(b):
        raise ValueError(f"rankings {a} and {b} do not rank the same answers")
    oa, ob = _outcomes(a, ties_a), _outcomes(b, ties_b)
    return sum(1 - abs(oa[p] - ob[p]) / 2 for p in oa) / len(oa)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def label_stats(store: LabelStore) -> dict[str, Any]:
    """Items done/left per labeler, inter-labeler (planned overlap) and gold agreement, flag and skip counts."""
    store.comparisons.refresh()
    store.skips.refresh()
    # item id -> labeler -> (sample-file indices best first, ties), first ranking per labeler, in file order
    rankings: dict[str, dict[str, tuple[list[int], list[list[int]]]]] = {}
    flags: Counter[str] = Counter()
    per_labeler: dict[str, dict[str, Any]] = {}
    over_quota = 0
    for row in store.comparisons.rows:
        labeler, item_id = row.get("labeler"), row.get("item_id")
        entry = per_labeler.setdefault(labeler, {"ranked": 0, "skipped": 0, "skip_reasons": {}})
        entry["ranked"] += 1
        for names in row.get("flags", []):
            flags.update(names)
        item = store.items.get(item_id)
        if item is not None:
            by_labeler = rankings.setdefault(item_id, {})
            if len(by_labeler) >= store.wanted(item):
                over_quota += 1  # only files written without the store's quota checks hold these
                continue
            index = {text: i for i, text in enumerate(item.responses)}
            by_labeler.setdefault(labeler, ([index[text] for text in row["responses"]], row.get("ties") or []))
    for row in store.skips.rows:
        entry = per_labeler.setdefault(row.get("labeler"), {"ranked": 0, "skipped": 0, "skip_reasons": {}})
        entry["skipped"] += 1
        reason = row.get("reason")
        entry["skip_reasons"][reason] = entry["skip_reasons"].get(reason, 0) + 1

    pair_scores: dict[tuple[str, str], list[float]] = {}
    for item_id, by_labeler in rankings.items():
        if not store.is_overlap(store.items[item_id]):
            continue
        for x, y in combinations(sorted(by_labeler), 2):
            (a, ties_a), (b, ties_b) = by_labeler[x], by_labeler[y]
            pair_scores.setdefault((x, y), []).append(pairwise_agreement(a, b, ties_a, ties_b))
    gold_scores: dict[str, list[float]] = {}
    for item_id, by_labeler in rankings.items():
        gold = store.items[item_id].gold
        if gold is not None:
            for labeler, (ranking, ties) in by_labeler.items():
                gold_scores.setdefault(labeler, []).append(pairwise_agreement(ranking, list(gold), ties))

    for labeler, entry in per_labeler.items():
        mine = [s for (x, y), scores in pair_scores.items() if labeler in (x, y) for s in scores]
        entry["left"] = len(store.remaining(labeler))
        entry["overlap_items"] = len(mine)
        entry["agreement"] = _mean(mine)
        entry["gold_items"] = len(gold_scores.get(labeler, []))
        entry["gold_agreement"] = _mean(gold_scores.get(labeler, []))
    all_pairs = [s for scores in pair_scores.values() for s in scores]
    skip_reasons: Counter[str] = Counter()
    for entry in per_labeler.values():
        skip_reasons.update(entry["skip_reasons"])
    return {
        "items": len(store.items),
        "overlap_items": sum(1 for item in store.items.values() if store.is_overlap(item)),
        "comparisons": len(store.comparisons.rows),
        "over_quota": over_quota,
        "items_ranked": sum(1 for i in store.items if i in rankings),
        "labelers": per_labeler,
        "inter_labeler_agreement": _mean(all_pairs),
        "overlapping_rankings": len(all_pairs),
        "agreement_by_pair": {f"{x} / {y}": {"items": len(s), "agreement": _mean(s)} for (x, y), s in pair_scores.items()},
        "flags": dict(flags.most_common()),
        "skip_reasons": dict(skip_reasons.most_common()),
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def stats_html(stats: dict[str, Any], viewer: str | None = None) -> str:
    """The Stats tab as HTML, every user-supplied string escaped. `viewer` None: everything (an admin, or an app
    without accounts); a labeler's name: the totals and that labeler's own numbers only."""
    e = html.escape
    labelers = stats["labelers"] if viewer is None else {n: v for n, v in stats["labelers"].items() if n == viewer}
    parts = [f"<p><b>{stats['comparisons']} rankings</b> of {stats['items_ranked']} / {stats['items']} items "
             f"({stats['overlap_items']} planned overlap items).</p>"]
    if stats["over_quota"]:
        parts.append(f"<p>{stats['over_quota']} rankings beyond their item's quota (left out of agreement).</p>")
    parts.append(_table(["labeler", "ranked", "skipped", "left", "agreement (overlap items)", "gold agreement (items)"],
                        [[name, v["ranked"], v["skipped"], v["left"], f"{_pct(v['agreement'])} ({v['overlap_items']})",
                          f"{_pct(v['gold_agreement'])} ({v['gold_items']})"] for name, v in sorted(labelers.items())]))
    parts.append(f"<p><b>Inter-labeler agreement</b>: {_pct(stats['inter_labeler_agreement'])} over "
                 f"{stats['overlapping_rankings']} overlapping rankings (InstructGPT: ~72%).</p>")
    if viewer is None and stats["agreement_by_pair"]:
        parts.append(_table(["labelers", "items", "agreement"], [[pair, v["items"], _pct(v["agreement"])]
                                                                 for pair, v in stats["agreement_by_pair"].items()]))
    flags = ", ".join(f"{k}: {v}" for k, v in stats["flags"].items()) or "none"
    reasons = stats["skip_reasons"] if viewer is None else (labelers.get(viewer) or {}).get("skip_reasons", {})
    skips = ", ".join(f"{k}: {v}" for k, v in reasons.items()) or "none"
    parts.append(f"<p><b>Flags</b>: {e(flags)}.</p>")
    parts.append(f"<p><b>Skip reasons</b>{'' if viewer is None else ' (yours)'}: {e(skips)}.</p>")
    return "\n".join(parts)
