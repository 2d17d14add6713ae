"""Write the embedded demo: base model and the datasets of every stage, reproducibly and without a network.

    python -m rlhf_recipes.demo.build --output_dir runs/demo
    python -m rlhf_recipes.demo.build --output_dir runs/demo --add_rankings runs/demo/feedback/sft/comparisons.jsonl

Layout (what `recipes/demo/*.yaml` reads):
    base/                     tokenizer + pretrained tiny GPT-2
    data/sft/{train,test}.jsonl      prompt, completion
    data/reward/{train,test}.jsonl   prompt, responses (K=4, best first, ranked by the simulated labeler): corpus
                                     continuations, and in train, after `--add_rankings`, the SFT model's own samples
    data/rm_prompts/train.jsonl      prompt (openings the SFT model answers K times for the reward model's rankings)
    data/prompts/{train,test}.jsonl  prompt (PPO training prompts; held-out evaluation prompts)
    data/ptx/train.jsonl             text (pretraining mix for PPO-ptx)
    data/heldout/prompts.jsonl       prompt (openings from templates no stage trained on: generalisation check)
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from .base import build_base_model
from .corpus import heldout_prompts, ptx_texts, review_prompts, sft_demonstrations
from .labeler import ranked_comparisons

SIZES = {"sft": (2000, 200), "reward": (1500, 300), "prompts": (1024, 64), "ptx": 1000, "heldout": 256,
         "rm_prompts": 1500}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def _corpus_rankings(seed: int) -> list[dict]:
    return ranked_comparisons(SIZES["reward"][0], k=4, seed=seed + 1)


# Files added to the demo after its first release: `build_demo` writes them into an older demo folder too.
ADDED_LATER: dict[str, Callable[[int], list[dict]]] = {
    "heldout/prompts.jsonl": lambda seed: [{"prompt": p} for p in heldout_prompts(SIZES["heldout"], seed)],
    "rm_prompts/train.jsonl": lambda seed: [{"prompt": p}
                                            for p in review_prompts(SIZES["rm_prompts"], seed + 3, "train")],
}


def build_demo_data(output_dir: str | Path, seed: int = 0) -> Path:
    data = Path(output_dir) / "data"
    n_train, n_test = SIZES["sft"]
    write_jsonl(data / "sft/train.jsonl", sft_demonstrations(n_train, seed=seed))
    write_jsonl(data / "sft/test.jsonl", sft_demonstrations(n_test, seed=seed + 1000))
    write_jsonl(data / "reward/train.jsonl", _corpus_rankings(seed))
    write_jsonl(data / "reward/test.jsonl", ranked_comparisons(SIZES["reward"][1], k=4, seed=seed + 1001))
    n_train, n_test = SIZES["prompts"]
    write_jsonl(data / "prompts/train.jsonl", [{"prompt": p} for p in review_prompts(n_train, seed, "train")])
    write_jsonl(data / "prompts/test.jsonl", [{"prompt": p} for p in review_prompts(n_test, seed, "eval")])
    write_jsonl(data / "ptx/train.jsonl", [{"text": t} for t in ptx_texts(SIZES["ptx"], seed=seed + 2)])
    for name, rows in ADDED_LATER.items():
        write_jsonl(data / name, rows(seed))
    return data


def add_rankings(output_dir: str | Path, comparisons_file: str | Path, seed: int = 0) -> int:
    """Make the reward model's train split the corpus rankings plus every ranking of `comparisons_file`.

    InstructGPT's reward model learns rankings of the policy's own samples; the demo's corpus rankings compare
    continuations written by the corpus generator, which the SFT model's answers only resemble. Trained on the
    corpus rankings alone the reward model judges SFT-like answers worse on openings it never saw, and PPO exploits
    that (`benchmarks/results/ppo-generalisation.md`: the `@labelerfix` rows against the `@sftrm` rows). The corpus
    rankings stay so that it also judges answers unlike SFT's, as PPO's become. `comparisons_file` is a label
    store's file (`feedback.simulated` writes it). Rewriting the corpus part from the seed makes a rerun give the
    same file. Returns the number of rows written.
    """
    from ..data import DataError, check_row_types, read_jsonl

    if not Path(comparisons_file).is_file():
        raise DataError(f"{comparisons_file}: no such rankings file (a label store's comparisons.jsonl, which "
                        "`python -m rlhf_recipes.feedback.simulated` or the labeling app writes).")
    lines: list[int] = []
    rows = read_jsonl(comparisons_file, lines)
    check_row_types(rows, str(comparisons_file), "line", lines)  # the dataset loader's type checks
    for row, line in zip(rows, lines):
        if row.get("prompt") is None or len(row.get("responses") or []) < 2:
            raise DataError(f"{comparisons_file}, line {line}: a ranking needs a 'prompt' string and a 'responses' "
                            "list of at least 2, best first. Fix or remove the line.")
    rankings = _corpus_rankings(seed) + [{"prompt": row["prompt"], "responses": row["responses"]} for row in rows]
    write_jsonl(Path(output_dir) / "data/reward/train.jsonl", rankings)
    return len(rankings)


def build_demo(output_dir: str | Path = "runs/demo", *, pretrain_steps: int = 300, pretrain_batch_size: int = 32,
               seed: int = 0, force: bool = False) -> Path:
    """Build the demo once; later calls reuse it unless `force`."""
    output_dir = Path(output_dir)
    marker = output_dir / "base" / "pretraining.json"
    if marker.is_file() and not force:
        for name, rows in ADDED_LATER.items():  # a demo built before these existed: add them, nothing else changes
            if not (output_dir / "data" / name).is_file():
                write_jsonl(output_dir / "data" / name, rows(seed))
        return output_dir
    build_demo_data(output_dir, seed=seed)
    build_base_model(output_dir / "base", steps=pretrain_steps, batch_size=pretrain_batch_size, seed=seed)
    return output_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="runs/demo")
    parser.add_argument("--pretrain_steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild even if the folder already holds a demo")
    parser.add_argument("--add_rankings", default=None, help="a label store's comparisons file: the reward train "
                                                             "split becomes the corpus rankings plus these")
    args = parser.parse_args()
    if args.add_rankings:
        from ..config import UserError

        try:
            count = add_rankings(args.output_dir, args.add_rankings, seed=args.seed)
        except UserError as err:
            parser.error(str(err))  # exit code 2, no traceback
        print(f"{args.output_dir}/data/reward/train.jsonl: {count} rankings (corpus + {args.add_rankings})")
        return
    out = build_demo(args.output_dir, pretrain_steps=args.pretrain_steps, seed=args.seed, force=args.force)
    report = json.loads((out / "base" / "pretraining.json").read_text())
    print(f"demo base model in {out / 'base'}: {report}")


if __name__ == "__main__":
    main()
