"""How far can a policy that stays near SFT get on the openings no stage trained on, and what holds it back?

    python benchmarks/best_of_n_ceiling.py                 # on runs/demo (after `make demo`), about a minute

Best-of-n from the demo's SFT policy, with two selectors: the demo's reward model (what PPO optimises) and the
simulated labeler itself (the gold the reward model learned; no method can use it, it marks the ceiling). For each
n, on the 256 held-out openings (`data/heldout/prompts.jsonl`): win rates against SFT's own sample (the evaluation
seed of `recipes/demo/evaluate_heldout.yaml`) by the labeler and the two independent judges, distinct-2 and mean
words as a multiple of SFT's, and the analytic KL of best-of-n, `log n - (n-1)/n`. The candidates are n further
samples per prompt (seeds 1235, 1236, ...), shared by both selectors, so the two columns differ only in who picks.

If the labeler's picks meet issue 15's generalisation goal at some n while the reward model's do not, the reward
model, not the optimiser, is what stands between PPO and the goal. Writes `benchmarks/results/best-of-n-ceiling.json`
and `.md`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402
from ppo_generalisation import GOAL, meets_goal  # noqa: E402  (beside this script: the same goal check)
from trl import ModelConfig  # noqa: E402

from rlhf_recipes.best_of_n import best_of_n_kl  # noqa: E402
from rlhf_recipes.data import read_jsonl  # noqa: E402
from rlhf_recipes.demo.judges import JUDGES, judge_scores  # noqa: E402
from rlhf_recipes.demo.labeler import labeler_score  # noqa: E402
from rlhf_recipes.evaluation import sample_responses  # noqa: E402
from rlhf_recipes.evaluation_metrics import distinct_n, markdown_table, win_rate  # noqa: E402
from rlhf_recipes.models import load_model, load_tokenizer, score_responses  # noqa: E402

EVAL_SEED = 1234  # recipes/demo/evaluate_heldout.yaml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo_dir", default="runs/demo")
    parser.add_argument("--ns", type=int, nargs="*", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--results", default=str(REPO / "benchmarks/results/best-of-n-ceiling.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    demo = Path(args.demo_dir)
    tokenizer = load_tokenizer(str(demo / "sft"), padding_side="left")
    model_args = ModelConfig(model_name_or_path=str(demo / "sft"), dtype="float32")
    sft = load_model(model_args, tokenizer, apply_lora=False).eval()
    reward_model = load_model(model_args, tokenizer, kind="reward", model_name_or_path=str(demo / "reward"),
                              apply_lora=False).eval()
    prompts = [row["prompt"] for row in read_jsonl(demo / "data/heldout/prompts.jsonl")]
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]

    def sample(seed: int) -> tuple[list[str], list[list[int]]]:
        _, responses = sample_responses(sft, tokenizer, prompts, response_length=24, temperature=1.0, seed=seed,
                                        batch_size=64)
        ids = [r[r != tokenizer.pad_token_id].tolist() for r in responses]
        return tokenizer.batch_decode(responses, skip_special_tokens=True), ids

    baseline, baseline_ids = sample(EVAL_SEED)
    candidates = [sample(EVAL_SEED + 1 + k) for k in range(max(args.ns))]
    rm = [score_responses(reward_model, prompt_ids, ids, pad_token_id=tokenizer.pad_token_id,
                          eos_token_id=tokenizer.eos_token_id).tolist() for _, ids in candidates]
    gold = [[labeler_score(p, t) for p, t in zip(prompts, texts)] for texts, _ in candidates]
    base_gold = [labeler_score(p, t) for p, t in zip(prompts, baseline)]
    base_judged = {j: judge_scores(j, baseline) for j in JUDGES}
    base_words = sum(len(t.split()) for t in baseline)
    base_d2 = distinct_n(baseline_ids, 2)

    rows = []
    for n in args.ns:
        for selector, scores in (("reward model", rm), ("labeler (gold)", gold)):
            best = [max(range(n), key=lambda k: scores[k][i]) for i in range(len(prompts))]
            texts = [candidates[k][0][i] for i, k in enumerate(best)]
            ids = [candidates[k][1][i] for i, k in enumerate(best)]
            row = {"n": n, "selector": selector, "kl": best_of_n_kl(n),
                   "labeler_win": win_rate([labeler_score(p, t) for p, t in zip(prompts, texts)], base_gold),
                   **{f"{j}_win": win_rate(judge_scores(j, texts), base_judged[j]) for j in JUDGES},
                   "distinct_2_ratio": distinct_n(ids, 2) / base_d2,
                   "words_ratio": sum(len(t.split()) for t in texts) / base_words}
            row["meets_goal"] = meets_goal(row)
            rows.append(row)
            print(" ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))

    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({"demo_dir": str(demo), "prompts": len(prompts), "rows": rows}, indent=2) + "\n")
    columns = ["n", "selector", "kl", "labeler_win", "vader_win", "afinn_win", "distinct_2_ratio", "words_ratio",
               "meets_goal"]
    results.with_suffix(".md").write_text(
        "# Best-of-n from SFT on the held-out openings: reward model against the labeler as selector\n\n"
        f"Written by `python benchmarks/best_of_n_ceiling.py` ({len(prompts)} openings no stage trained on; win rates "
        "against SFT's own sample, ties half; distinct-2 and words as a multiple of SFT's; KL of best-of-n "
        f"`log n - (n-1)/n`). Goal (issue 15): both judges >= {GOAL['judge_win']}, labeler >= "
        f"{GOAL['labeler_win']}, distinct-2 and words >= {GOAL['ratio']}x.\n\n"
        + markdown_table(rows, columns) + "\n")
    print(f"wrote {results} and {results.with_suffix('.md')}")


if __name__ == "__main__":
    main()
