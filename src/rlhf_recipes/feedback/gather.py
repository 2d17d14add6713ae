"""All comparisons so far in one reward dataset: what each round of the data loop trains its reward model on.

    python -m rlhf_recipes.feedback.gather --output_dir runs/demo/feedback/round2/reward_data \
        runs/demo/data/reward runs/demo/feedback/round1/comparisons.jsonl runs/demo/feedback/round2/comparisons.jsonl
    make reward ARGS="--dataset_name runs/demo/feedback/round2/reward_data --output_dir runs/demo/feedback/round2/reward"

Each source is anything `dataset_name` accepts (a label store's `comparisons.jsonl`, a file or a folder of
`train.*`/`test.*`, a Hub id). Every row becomes a ranking (`prompt`, `responses` best first; a `prompt`/`chosen`/
`rejected` pair is a ranking of two), without the store's bookkeeping columns (labeler, flags, times); the train
splits of all sources, in order, go to `<output_dir>/train.jsonl` and their test splits to `test.jsonl`. Rows are
kept as they are, so an item two labelers ranked counts twice, as in the round driver (`make iterate`), which builds
each round's reward data with this function.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..data import DataError, load_raw_dataset


def _as_ranking(row: dict[str, Any], source: str, split: str, number: int) -> dict[str, Any]:
    if "responses" in row and "prompt" in row:  # a tie group stays with its ranking (no pair is made inside it)
        return {"prompt": row["prompt"], "responses": row["responses"], **({"ties": row["ties"]} if row.get("ties")
                                                                            else {})}
    if {"prompt", "chosen", "rejected"} <= set(row):
        return {"prompt": row["prompt"], "responses": [row["chosen"], row["rejected"]]}
    raise DataError(f"{source} [{split}], row {number}: a comparison needs `prompt` and `responses` (best first) or "
                    f"`prompt`, `chosen` and `rejected`; found {sorted(row)}. Convert the file, or train on it "
                    "alone with `--dataset_name`.")


def gather_comparisons(sources: Iterable[str | Path], output_dir: str | Path, *,
                       exclude_item_ids: Iterable[str] = ()) -> dict[str, int]:
    """Write the rankings of every source to `output_dir/train.jsonl` (and `test.jsonl` when a source has a test
    split), leaving out rows whose `item_id` is in `exclude_item_ids`; returns the row count per split."""
    excluded = set(exclude_item_ids)
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    sources = [str(source) for source in sources]
    if not sources:
        raise DataError("No comparisons to gather: give the comparison files (and the first round's data).")
    for source in sources:
        raw = load_raw_dataset(source, field="sources")
        for split, rows in raw.items():
            target = splits["test" if split in ("test", "validation", "eval") else "train"]
            for number, row in enumerate(rows, start=1):
                if row.get("item_id") is not None and row["item_id"] in excluded:
                    continue
                target.append(_as_ranking(row, source, split, number))
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, rows in splits.items():
        path = output_dir / f"{split}.jsonl"
        if not rows:
            path.unlink(missing_ok=True)  # no stale test split from an earlier gathering
            continue
        tmp = path.with_suffix(".jsonl.tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        tmp.replace(path)  # a reader sees the old file or the new one, never half of it
        counts[split] = len(rows)
    return counts


def main(argv: list[str] | None = None) -> dict[str, int]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="+", help="comparison files or datasets, oldest first")
    parser.add_argument("--output_dir", required=True, help="the folder to write train.jsonl (and test.jsonl) to")
    args = parser.parse_args(argv)
    counts = gather_comparisons(args.sources, args.output_dir)
    print(f"{counts.get('train', 0)} training and {counts.get('test', 0)} test comparisons from "
          f"{len(args.sources)} source(s) in {args.output_dir}: train a reward model with "
          f"--dataset_name {args.output_dir}")
    return counts


if __name__ == "__main__":
    from ..config import run_cli

    run_cli(main)
