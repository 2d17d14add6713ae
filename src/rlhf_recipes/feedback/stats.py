"""Progress and agreement of the labelers, from the label store's files.

Agreement is measured the way InstructGPT reports it (~72% between labelers): over the C(K,2) pairs of answers of
an item, the fraction that two rankings order the same way, averaged over the items both ranked (and, overall,
over every pair of labelers that overlap). The same measure against a gold ranking screens labelers.
"""

from __future__ import annotations

from collections import Counter
from itertools import combinations
from typing import Any

from .store import LabelStore


def pairwise_agreement(a: list[int], b: list[int]) -> float:
    """Fraction of answer pairs that rankings `a` and `b` (best first, same answers) order the same way."""
    if sorted(a) != sorted(b):
        raise ValueError(f"rankings {a} and {b} do not rank the same answers")
    pos_a = {x: i for i, x in enumerate(a)}
    pos_b = {x: i for i, x in enumerate(b)}
    pairs = list(combinations(a, 2))
    same = sum((pos_a[x] < pos_a[y]) == (pos_b[x] < pos_b[y]) for x, y in pairs)
    return same / len(pairs)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def label_stats(store: LabelStore) -> dict[str, Any]:
    """Items done/left per labeler, inter-labeler and gold agreement, flag and skip counts."""
    store.comparisons.refresh()
    store.skips.refresh()
    rankings: dict[str, dict[str, list[int]]] = {}  # item id -> labeler -> sample-file indices, best first
    flags: Counter[str] = Counter()
    per_labeler: dict[str, dict[str, Any]] = {}
    for row in store.comparisons.rows:
        labeler, item_id = row.get("labeler"), row.get("item_id")
        entry = per_labeler.setdefault(labeler, {"ranked": 0, "skipped": 0})
        entry["ranked"] += 1
        for names in row.get("flags", []):
            flags.update(names)
        item = store.items.get(item_id)
        if item is not None:
            index = {text: i for i, text in enumerate(item.responses)}
            rankings.setdefault(item_id, {})[labeler] = [index[text] for text in row["responses"]]
    for row in store.skips.rows:
        per_labeler.setdefault(row.get("labeler"), {"ranked": 0, "skipped": 0})["skipped"] += 1

    pair_scores: dict[tuple[str, str], list[float]] = {}
    for by_labeler in rankings.values():
        for x, y in combinations(sorted(by_labeler), 2):
            pair_scores.setdefault((x, y), []).append(pairwise_agreement(by_labeler[x], by_labeler[y]))
    gold_scores: dict[str, list[float]] = {}
    for item_id, by_labeler in rankings.items():
        gold = store.items[item_id].gold
        if gold is not None:
            for labeler, ranking in by_labeler.items():
                gold_scores.setdefault(labeler, []).append(pairwise_agreement(ranking, list(gold)))

    for labeler, entry in per_labeler.items():
        entry["left"] = len(store.remaining(labeler))
        entry["gold_items"] = len(gold_scores.get(labeler, []))
        entry["gold_agreement"] = _mean(gold_scores.get(labeler, []))
    all_pairs = [s for scores in pair_scores.values() for s in scores]
    return {
        "items": len(store.items),
        "comparisons": len(store.comparisons.rows),
        "items_ranked": sum(1 for i in store.items if i in rankings),
        "labelers": per_labeler,
        "inter_labeler_agreement": _mean(all_pairs),
        "overlapping_rankings": len(all_pairs),
        "agreement_by_pair": {f"{x} / {y}": {"items": len(s), "agreement": _mean(s)} for (x, y), s in pair_scores.items()},
        "flags": dict(flags.most_common()),
        "skip_reasons": dict(Counter(r.get("reason") for r in store.skips.rows).most_common()),
    }


def stats_markdown(stats: dict[str, Any]) -> str:
    """The Stats tab: one table per labeler, agreement, flags."""
    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.0f}%"

    lines = [f"**{stats['comparisons']} rankings** of {stats['items_ranked']} / {stats['items']} items.", "",
             "| labeler | ranked | skipped | left | gold agreement (items) |", "| --- | --- | --- | --- | --- |"]
    for name, e in sorted(stats["labelers"].items()):
        lines.append(f"| {name} | {e['ranked']} | {e['skipped']} | {e['left']} | {pct(e['gold_agreement'])} "
                     f"({e['gold_items']}) |")
    lines += ["", f"**Inter-labeler agreement**: {pct(stats['inter_labeler_agreement'])} over "
              f"{stats['overlapping_rankings']} overlapping rankings (InstructGPT: ~72%)."]
    if stats["agreement_by_pair"]:
        lines += ["", "| labelers | items | agreement |", "| --- | --- | --- |"]
        lines += [f"| {pair} | {v['items']} | {pct(v['agreement'])} |" for pair, v in stats["agreement_by_pair"].items()]
    flags = ", ".join(f"{k}: {v}" for k, v in stats["flags"].items()) or "none"
    skips = ", ".join(f"{k}: {v}" for k, v in stats["skip_reasons"].items()) or "none"
    lines += ["", f"**Flags**: {flags}.", "", f"**Skip reasons**: {skips}."]
    return "\n".join(lines)
