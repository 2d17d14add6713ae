"""The data loop, repeated (InstructGPT steps 2-3): `make iterate ROUNDS=3` on the embedded demo.

Round 0 is the demo's one-shot PPO policy. Each round r then
  1. samples K answers on fresh prompts (never seen by an earlier round) from the current policy, with the current
     RM's scores (`run_sampling`, the code of recipes/sample.py);
  2. has the simulated labeler rank them THROUGH the label store, as the app's users do (`label_all`);
  3. retrains the RM from the SFT checkpoint on all comparisons so far (the demo's original rankings plus every
     round's, minus each round's held-out items) with recipes/reward.py;
  4. continues PPO from the current policy (the KL reference stays SFT) with the new RM, recipes/ppo.py;
  5. evaluates against SFT on the demo's held-out openings, which no stage trained on (`data/heldout`, templates that
     no training split uses), with `evaluate_policies`: the labeler and two independent judges (`judges`).
`rm_accuracy_on_policy_before/after` is the pairwise accuracy, against the labeler, of the old and the new RM on
the held-out part of the round's samples: the current policy's answers, which the old RM never saw (the
distribution shift that iteration is meant to fix).

Each judge (the simulated labeler, and VADER and AFINN from `rlhf_recipes.demo.judges`, which share nothing with
the labeler or the RM) adds `<name>_win_rate` against SFT to every round.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from ..config import require_paths
from ..demo.judges import JUDGES

REPO = Path(__file__).resolve().parents[3]


@dataclass
class RoundsArguments:
    demo_dir: str = field(default="runs/demo", metadata={"help": "A finished `make demo` (sft, reward, ppo, data)."})
    output_dir: str = field(default="runs/demo/iterate", metadata={"help": "Rounds, rounds.json and rounds.png."})
    rounds: int = field(default=3, metadata={"range": "[1, inf)", "help": "Rounds after the one-shot policy."})
    prompts_per_round: int = field(default=192, metadata={"range": "[1, inf)",
        "help": "Fresh prompts sampled per round."})
    num_responses_per_prompt: int = field(default=4, metadata={"range": "[2, 9]", "help": "K."})
    held_out_fraction: float = field(default=0.25, metadata={"range": "[0, 1)",
        "help": "Of each round's items, kept out of the RM's "
                "training to measure its accuracy."})
    reward_epochs: float = field(default=2.0, metadata={"range": "(0, inf)",
        "help": "RM epochs per round (from SFT, on everything)."})
    ppo_episodes: int = field(default=1024, metadata={"range": "[1, inf)", "help": "PPO episodes per round."})
    ppo_target_kl: float | None = field(
        default=None, metadata={"range": "(0, inf)",
            "help": "Adaptive-KL target of each round's PPO (default: the one-shot policy's "
                    "measured KL to SFT, so that iterating does not buy reward with drift)."})
    ppo_kl_horizon: int = field(default=256, metadata={"range": "[1, inf)",
        "help": "Adaptive-KL horizon (episodes) of each round's "
                "PPO: short, so beta adapts within a round."})
    ppo_carry_kl_coef: bool = field(default=True, metadata={"help": "Start each round's KL coefficient where the "
                                                                    "last PPO run ended (false: the recipe's kl_coef)."})
    eval_prompts: int = field(default=256, metadata={"range": "[1, inf)",
        "help": "Held-out openings (`data/heldout`) for the evaluation."})
    judges: list[str] = field(default_factory=lambda: ["vader", "afinn"], metadata={"choices": list(JUDGES),
        "help": "Independent judges reported per round besides the labeler (rlhf_recipes.demo.judges)."})
    seed: int = field(default=0, metadata={"range": "[0, 4294967295]",
        "help": "Seeds prompts, sampling and training."})


def _kl_coef_flags(policy_path: str, carry: bool) -> list[str]:
    """`--kl_coef` at the adaptive KL coefficient the last PPO run ended with (its stage_metrics.json), or no flag
    (the recipe's own) when not carrying it over or when the run did not record one."""
    metrics = Path(policy_path) / "stage_metrics.json"
    coef = json.loads(metrics.read_text()).get("objective/kl_coef") if carry and metrics.is_file() else None
    return [] if coef is None else ["--kl_coef", str(float(coef))]


def _run(recipe: str, argv: list[str]):
    from ..config import load_recipe_module, parse_recipe_args

    module = load_recipe_module(REPO / "recipes" / f"{recipe}.py")
    return module.main(*parse_recipe_args(module.DATACLASSES, argv))


def _pairwise_accuracy(scores: list[float], best_first: list[int]) -> tuple[int, int]:
    """(correct, total) answer pairs that `scores` order as the ranking does."""
    rank = {index: position for position, index in enumerate(best_first)}
    pairs = list(combinations(range(len(best_first)), 2))
    correct = sum((scores[a] > scores[b]) == (rank[a] < rank[b]) for a, b in pairs)
    return correct, len(pairs)


def _rm_accuracy(reward_path: str | Path, items: list[tuple[str, list[str], list[int]]]) -> float:
    """Pairwise accuracy of a reward model on (prompt, responses, labeler's ranking best first) items."""
    from trl import ModelConfig

    from ..models import load_model, load_tokenizer
    from .sampling import score_answers

    tokenizer = load_tokenizer(str(reward_path), padding_side="left")
    model = load_model(ModelConfig(model_name_or_path=str(reward_path), dtype="float32"), tokenizer, kind="reward",
                       role="reward", apply_lora=False).eval()
    correct = total = 0
    for prompt, responses, ranking in items:
        ids = [tokenizer(r, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for r in responses]
        c, t = _pairwise_accuracy(score_answers(model, tokenizer, prompt, ids), ranking)
        correct, total = correct + c, total + t
    return correct / total


def _evaluate(policy_path: str, sft_path: str, prompts: list[str], seed: int, judges: list[str]) -> dict[str, Any]:
    from trl import ModelConfig

    from ..evaluation import EvalArguments, evaluate_policies
    from ..models import load_model, load_tokenizer

    tokenizer = load_tokenizer(sft_path, padding_side="left")
    args = EvalArguments(num_prompts=len(prompts), response_length=24, seed=seed + 1234, simulated_labeler=True,
                         judges=list(judges))
    load = lambda path: load_model(ModelConfig(model_name_or_path=path, dtype="float32"), tokenizer,  # noqa: E731
                                   apply_lora=False).eval()
    sft = load(sft_path)
    (sft_row, row), _ = evaluate_policies({"sft": sft, "policy": load(policy_path)}, tokenizer, prompts,
                                          reward_model=None, reference=sft, args=args)
    return {"kl": row["kl_to_reference"], "distinct_2": row["distinct_2"], "distinct_2_sft": sft_row["distinct_2"],
            "mean_words": row["mean_words"], "mean_words_sft": sft_row["mean_words"],
            **{f"{name}_win_rate": row[f"{name}_win_vs_first"] for name in ["labeler", *judges]}}


def _judge_names(rounds: list[dict[str, Any]]) -> list[str]:
    """The independent judges recorded in `rounds` (every `<name>_win_rate` but the labeler's)."""
    return sorted({key[: -len("_win_rate")] for r in rounds for key in r if key.endswith("_win_rate")} - {"labeler"})


def _plot(rounds: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["round"] for r in rounds]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    axes[0].plot(x[1:], [r["rm_accuracy_on_policy_before"] for r in rounds[1:]], "o-", label="RM before retraining")
    axes[0].plot(x[1:], [r["rm_accuracy_on_policy_after"] for r in rounds[1:]], "s-", label="RM after retraining")
    axes[0].set_title("RM accuracy on the policy's answers")
    axes[0].legend(fontsize=8)
    axes[1].plot(x, [r["labeler_win_rate"] for r in rounds], "o-", label="labeler win rate vs SFT")
    for name in _judge_names(rounds):
        axes[1].plot(x, [r[f"{name}_win_rate"] for r in rounds], "o--", label=f"{name} win rate vs SFT")
    axes[1].set_title("Win rate vs SFT (held-out prompts)")
    axes[1].legend(fontsize=8)
    axes[2].plot(x, [r["kl"] for r in rounds], "o-", label="KL to SFT")
    axes[2].plot(x, [r["distinct_2"] / r["distinct_2_sft"] for r in rounds], "s-", label="distinct-2 / SFT's")
    axes[2].plot(x, [r["mean_words"] / r["mean_words_sft"] for r in rounds], "^-", label="mean words / SFT's")
    axes[2].set_title("KL and diversity")
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("round")
        ax.set_xticks(x)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def run_rounds(args: RoundsArguments) -> list[dict[str, Any]]:
    from ..data import read_jsonl
    from ..demo.build import write_jsonl
    from ..demo.corpus import review_prompts
    from ..demo.labeler import rank_responses
    from .gather import gather_comparisons
    from .sampling import prompt_id
    from .simulated import label_all
    from .store import LabelStore

    demo, out = Path(args.demo_dir), Path(args.output_dir)
    require_paths("demo_dir", demo, ("sft", "ppo", "reward", "data/heldout/prompts.jsonl", "data/reward/train.jsonl"),
                  "Build the demo first (`make demo`), or point --demo_dir at one.")
    out.mkdir(parents=True, exist_ok=True)
    sft, policy, reward = str(demo / "sft"), str(demo / "ppo"), str(demo / "reward")
    eval_prompts = [r["prompt"] for r in read_jsonl(demo / "data/heldout/prompts.jsonl")][: args.eval_prompts]
    base_rankings = read_jsonl(demo / "data/reward/train.jsonl")
    samples_file, comparisons_file = out / "samples.jsonl", out / "comparisons.jsonl"
    results_file = out / "rounds.json"
    rounds: list[dict[str, Any]] = json.loads(results_file.read_text()) if results_file.is_file() else []
    if not rounds:
        start = time.time()
        rounds.append({"round": 0, "comparisons": len(base_rankings), "policy_path": policy,
                       "rm_accuracy_on_policy_before": None, "rm_accuracy_on_policy_after": None,
                       **_evaluate(policy, sft, eval_prompts, args.seed, args.judges),
                       "seconds": round(time.time() - start, 1)})
        results_file.write_text(json.dumps(rounds, indent=2) + "\n")
    else:  # resume after the last finished round
        policy, reward = rounds[-1]["policy_path"], rounds[-1].get("reward_path", reward)
    used = {prompt_id(p) for p in review_prompts(1024, args.seed, "train")}  # the demo's PPO prompts are not fresh

    for r in range(len(rounds), args.rounds + 1):
        start = time.time()
        folder = out / f"round{r}"
        # 1. fresh prompts, sampled from the current policy and scored by the current RM
        fresh, k = [], 0
        while len(fresh) < args.prompts_per_round:
            k += 1
            for prompt in review_prompts(args.prompts_per_round, seed=args.seed + 7919 * r + k, split="train"):
                if prompt_id(prompt) not in used and len(fresh) < args.prompts_per_round:
                    used.add(prompt_id(prompt))
                    fresh.append(prompt)
        write_jsonl(folder / "prompts/train.jsonl", [{"prompt": p} for p in fresh])
        _run("sample", ["--model_name_or_path", policy, "--dtype", "float32", "--reward_model_path", reward,
                        "--dataset_name", str(folder / "prompts"), "--output_file", str(samples_file),
                        "--num_responses_per_prompt", str(args.num_responses_per_prompt),
                        "--max_new_tokens", "24", "--batch_size", "32", "--seed", str(args.seed + r)])
        # 2. the simulated labeler ranks them through the label store
        store = LabelStore(samples_file, comparisons_file)
        label_all(store, "simulated", rank_responses)
        ids = {prompt_id(p) for p in fresh}
        this_round = [row for row in store.comparisons.rows if row["item_id"] in ids]
        n_held = max(1, int(len(this_round) * args.held_out_fraction))
        held_ids = {row["item_id"] for row in this_round[-n_held:]}
        held = []
        for row in this_round[-n_held:]:
            item = store.items[row["item_id"]]
            index = {text: i for i, text in enumerate(item.responses)}
            held.append((item.prompt, list(item.responses), [index[t] for t in row["responses"]]))
        before = _rm_accuracy(reward, held)
        # 3. a new RM from SFT on all comparisons so far (held-out items of every round excluded)
        all_held = set().union(*(set(x.get("held_out_ids", [])) for x in rounds), held_ids)
        counts = gather_comparisons([demo / "data/reward", comparisons_file], folder / "reward_data",
                                    exclude_item_ids=all_held)
        new_reward = str(folder / "reward")
        _run("reward", ["--config", str(REPO / "recipes/demo/reward.yaml"), "--model_name_or_path", sft,
                        "--dataset_name", str(folder / "reward_data"), "--output_dir", new_reward,
                        "--normalization_dataset", str(demo / "data/sft"), "--overwrite_output_dir", "true",
                        "--num_train_epochs",
                        str(args.reward_epochs), "--save_strategy", "no", "--seed", str(args.seed + r)])
        after = _rm_accuracy(new_reward, held)
        # 4. PPO continues from the current policy, reference pi_SFT, with the new RM
        new_policy = str(folder / "ppo")
        _run("ppo", ["--config", str(REPO / "recipes/demo/ppo.yaml"), "--model_name_or_path", sft,
                     "--sft_model_path", sft, "--policy_model_path", policy, "--reward_model_path", new_reward,
                     "--dataset_name", str(folder / "prompts"), "--ptx_dataset", str(demo / "data/ptx/train.jsonl"),
                     "--output_dir", new_policy, "--overwrite_output_dir", "true",  # a round is redone whole
                     "--total_episodes", str(args.ppo_episodes),
                     "--save_strategy", "no", "--num_sample_generations", "0", "--seed", str(args.seed + r),
                     "--target_kl", str(args.ppo_target_kl or rounds[0]["kl"]),
                     "--kl_horizon", str(args.ppo_kl_horizon),
                     # beta carries on from where the last PPO run left it, and adapts within a round
                     *_kl_coef_flags(policy, args.ppo_carry_kl_coef)])
        # 5. evaluate
        policy, reward = new_policy, new_reward
        rounds.append({"round": r, "comparisons": counts["train"], "policy_path": policy, "reward_path": reward,
                       "rm_accuracy_on_policy_before": before, "rm_accuracy_on_policy_after": after,
                       **_evaluate(policy, sft, eval_prompts, args.seed, args.judges), "held_out_ids": sorted(held_ids),
                       "seconds": round(time.time() - start, 1)})
        results_file.write_text(json.dumps(rounds, indent=2) + "\n")
        _plot(rounds, out / "rounds.png")
    _plot(rounds, out / "rounds.png")
    return rounds


def rounds_table(rounds: list[dict[str, Any]]) -> str:
    def f(value, digits=2):
        return "-" if value is None else f"{value:.{digits}f}"

    extra = _judge_names(rounds)
    head = ["round", "comparisons", "RM acc. on policy (before -> after)", "labeler win rate vs SFT",
            *[f"{j} win rate" for j in extra], "KL to SFT", "distinct-2 (SFT)", "mean words (SFT)", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rounds:
        cells = [str(r["round"]), str(r["comparisons"]),
                 f"{f(r['rm_accuracy_on_policy_before'])} -> {f(r['rm_accuracy_on_policy_after'])}",
                 f(r["labeler_win_rate"]), *[f(r[f"{j}_win_rate"]) for j in extra], f(r["kl"]),
                 f"{f(r['distinct_2'])} ({f(r['distinct_2_sft'])})", f"{f(r['mean_words'], 1)} ({f(r['mean_words_sft'], 1)})",
                 f(r.get("seconds"), 0)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
