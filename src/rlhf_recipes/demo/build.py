"""Write the embedded demo: base model and the datasets of every stage, reproducibly and without a network.

    python -m rlhf_recipes.demo.build --output_dir runs/demo

Layout (what `recipes/demo/*.yaml` reads):
    base/                     tokenizer + pretrained tiny GPT-2
    data/sft/{train,test}.jsonl      prompt, completion
    data/reward/{train,test}.jsonl   prompt, responses (K=4, best first, ranked by the simulated labeler)
    data/prompts/{train,test}.jsonl  prompt (PPO training prompts; held-out evaluation prompts)
    data/ptx/train.jsonl             text (pretraining mix for PPO-ptx)
    data/heldout/prompts.jsonl       prompt (openings from templates no stage trained on: generalisation check)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .base import build_base_model
from .corpus import heldout_prompts, ptx_texts, review_prompts, sft_demonstrations
from .labeler import ranked_comparisons

SIZES = {"sft": (2000, 200), "reward": (1500, 300), "prompts": (1024, 64), "ptx": 1000, "heldout": 256}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def build_demo_data(output_dir: str | Path, seed: int = 0) -> Path:
    data = Path(output_dir) / "data"
    n_train, n_test = SIZES["sft"]
    write_jsonl(data / "sft/train.jsonl", sft_demonstrations(n_train, seed=seed))
    write_jsonl(data / "sft/test.jsonl", sft_demonstrations(n_test, seed=seed + 1000))
    n_train, n_test = SIZES["reward"]
    write_jsonl(data / "reward/train.jsonl", ranked_comparisons(n_train, k=4, seed=seed + 1))
    write_jsonl(data / "reward/test.jsonl", ranked_comparisons(n_test, k=4, seed=seed + 1001))
    n_train, n_test = SIZES["prompts"]
    write_jsonl(data / "prompts/train.jsonl", [{"prompt": p} for p in review_prompts(n_train, seed, "train")])
    write_jsonl(data / "prompts/test.jsonl", [{"prompt": p} for p in review_prompts(n_test, seed, "eval")])
    write_jsonl(data / "ptx/train.jsonl", [{"text": t} for t in ptx_texts(SIZES["ptx"], seed=seed + 2)])
    write_jsonl(data / "heldout/prompts.jsonl", [{"prompt": p} for p in heldout_prompts(SIZES["heldout"], seed)])
    return data


def build_demo(output_dir: str | Path = "runs/demo", *, pretrain_steps: int = 300, pretrain_batch_size: int = 32,
               seed: int = 0, force: bool = False) -> Path:
    """Build the demo once; later calls reuse it unless `force`."""
    output_dir = Path(output_dir)
    marker = output_dir / "base" / "pretraining.json"
    if marker.is_file() and not force:
        heldout = output_dir / "data/heldout/prompts.jsonl"
        if not heldout.is_file():  # a demo built before the held-out set existed: add it, nothing else changes
            write_jsonl(heldout, [{"prompt": p} for p in heldout_prompts(SIZES["heldout"], seed)])
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
    args = parser.parse_args()
    out = build_demo(args.output_dir, pretrain_steps=args.pretrain_steps, seed=args.seed, force=args.force)
    report = json.loads((out / "base" / "pretraining.json").read_text())
    print(f"demo base model in {out / 'base'}: {report}")


if __name__ == "__main__":
    main()
