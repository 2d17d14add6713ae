"""Scripted labelers write through the label store like people do: same serving rules, same file, same checks.

    python -m rlhf_recipes.feedback.simulated --samples_file runs/demo/feedback/samples.jsonl \
        --comparisons_file runs/demo/feedback/comparisons.jsonl          # the demo's simulated labeler
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from .store import LabelStore

Ranker = Callable[[str, list[str]], list[int]]


def label_all(store: LabelStore, labeler: str, rank: Ranker, limit: int | None = None) -> int:
    """Let `rank(prompt, responses) -> indices best first` rank every item the store serves `labeler`; returns how
    many rankings were stored."""
    stored = 0
    while limit is None or stored < limit:
        item = store.next_item(labeler)
        if item is None:
            break
        store.submit(labeler, item["id"], rank(item["prompt"], item["responses"]), token=item["token"])
        stored += 1
    return stored


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples_file", required=True)
    parser.add_argument("--comparisons_file", required=True)
    parser.add_argument("--labeler", default="simulated", help="the name its rankings are stored under")
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args(argv)
    from ..demo.labeler import rank_responses

    store = LabelStore(args.samples_file, args.comparisons_file)
    count = label_all(store, args.labeler, rank_responses, args.limit)
    print(f"{args.labeler} stored {count} rankings in {args.comparisons_file}")


if __name__ == "__main__":
    from ..config import run_cli

    run_cli(main)
