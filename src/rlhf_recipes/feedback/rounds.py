"""The data loop, repeated (InstructGPT steps 2-3): `make iterate ROUNDS=3 [METHOD=dpo]` on the embedded demo.

`--method ppo` (the default). Round 0 is the demo's one-shot PPO policy. Each round r then
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

`--method dpo`: no reward model. Round 0 is DPO from SFT on the demo's rankings (the labels the one-shot RM learned
from). Each round r samples K answers from the current policy (no RM scores), the labeler ranks them through the
label store, and recipes/dpo.py continues from the current policy on all rankings so far (minus the held-out items);
evaluation as above. The DPO reference (`dpo_reference`) is SFT in every round by default: the KL each round's
DPO is held to is then the same KL to SFT that PPO's rounds hold and the evaluation measures, so drift cannot add
up round after round unchecked; `previous` uses the last round's policy instead (Yuan et al. 2024's self-rewarding
loop), which lets each round move a full DPO step further from SFT. For DPO, `rm_accuracy_on_policy_*` is the
accuracy of the policy's implicit reward log pi(y|x) - log pi_ref(y|x), before (last round's policy and its
reference) and after the round.

State lives on disk only, so a resumed run makes the same rounds as an uninterrupted one: rounds.json holds the
finished rounds, `round<r>/prompts/train.jsonl` each round's prompts (a round's prompts exclude the demo's PPO
prompts and every earlier round's, read from those files), samples.jsonl and comparisons.jsonl (the label store)
everything sampled and ranked. A rerun continues after the last finished round; an unfinished round starts again
from its stage outputs but keeps its prompts, samples and rankings.

Each judge (the simulated labeler, and VADER and AFINN from `rlhf_recipes.demo.judges`, which share nothing with
the labeler or the RM) adds `<name>_win_rate` against SFT to every round.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import torch

from ..config import require_paths
from ..demo.judges import JUDGES

REPO = Path(__file__).resolve().parents[3]


METHODS = ("ppo", "dpo")


@dataclass
class RoundsArguments:
    demo_dir: str = field(default="runs/demo", metadata={"help": "A finished `make demo` (sft, reward, ppo, data)."})
    output_dir: str = field(default="runs/demo/iterate", metadata={"help": "Rounds, rounds.json and rounds.png."})
    method: str = field(default="ppo", metadata={
        "help": "What each round trains on the rankings: `ppo` (a new RM on all rankings so far, then PPO) or `dpo` "
                "(DPO on all rankings so far, no RM).", "choices": list(METHODS)})
    rounds: int = field(default=3, metadata={"range": "[1, inf)", "help": "Rounds after the one-shot policy."})
    prompts_per_round: int = field(default=192, metadata={"range": "[1, inf)",
                                                          "help": "Fresh prompts sampled per round."})
    num_responses_per_prompt: int = field(default=4, metadata={"range": "[2, 9]", "help": "K."})
    held_out_fraction: float = field(default=0.25, metadata={
        "range": "(0, 1)", "help": "Of each round's items, kept out of training (RM or DPO) to measure its accuracy."})
    reward_config: str = field(default=str(REPO / "recipes/demo/reward.yaml"), metadata={
        "help": "The YAML of each round's reward model (method ppo)."})
    reward_epochs: float = field(default=2.0, metadata={"range": "(0, inf)",
                                                        "help": "RM epochs per round (from SFT, on everything)."})
    ppo_config: str = field(default=str(REPO / "recipes/demo/ppo.yaml"), metadata={
        "help": "The YAML of each round's PPO (method ppo)."})
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
    dpo_config: str = field(default=str(REPO / "recipes/demo/dpo.yaml"), metadata={
        "help": "The YAML of each round's DPO (method dpo), round 0's included."})
    dpo_epochs: float | None = field(default=None, metadata={
        "range": "(0, inf)", "help": "DPO epochs per round over all rankings so far (default: the YAML's)."})
    dpo_reference: str = field(default="sft", metadata={
        "help": "DPO's reference in round r: `sft` (every round; the KL the evaluation measures) or `previous` (the "
                "policy round r starts from).", "choices": ["sft", "previous"]})
    eval_prompts: int = field(default=256, metadata={"range": "[1, inf)",
        "help": "Held-out openings (`data/heldout`) for the evaluation."})
    judges: list[str] = field(default_factory=lambda: ["vader", "afinn"], metadata={"choices": list(JUDGES),
        "help": "Independent judges reported per round besides the labeler (rlhf_recipes.demo.judges)."})
    seed: int = field(default=0, metadata={"range": "[0, 4294967295]",
        "help": "Seeds prompts, sampling and training."})

    def __post_init__(self):
        from ..ranges import check_arguments

        check_arguments(self)  # the declared ranges and choices, also for arguments built in code


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


def _method(row: dict[str, Any]) -> str:
    return row.get("method", "ppo")  # rounds.json files written before DPO rounds existed are PPO's


def _plot(rounds: list[dict[str, Any]], path: Path) -> None:
    """Three panels (preference accuracy on the policy's answers, win rates vs SFT, KL and diversity) by round;
    one line style per method when `rounds` holds several loops (PPO solid, DPO dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in METHODS if any(_method(r) == m for r in rounds)]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for method, style in zip(methods, ["-", "--"]):
        rows = [r for r in rounds if _method(r) == method]
        tag = f"{method}: " if len(methods) > 1 else ""
        x = [r["round"] for r in rows]
        model = "RM" if method == "ppo" else "implicit RM"
        axes[0].plot(x[1:], [r["rm_accuracy_on_policy_before"] for r in rows[1:]], "o" + style, color="C0",
                     label=f"{tag}{model} before the round")
        axes[0].plot(x[1:], [r["rm_accuracy_on_policy_after"] for r in rows[1:]], "s" + style, color="C1",
                     label=f"{tag}{model} after the round")
        axes[1].plot(x, [r["labeler_win_rate"] for r in rows], "o" + style, color="C0", label=f"{tag}labeler")
        for i, name in enumerate(_judge_names(rows)):
            axes[1].plot(x, [r[f"{name}_win_rate"] for r in rows], "^" + style, color=f"C{i + 1}",
                         label=f"{tag}{name}")
        axes[2].plot(x, [r["kl"] for r in rows], "o" + style, color="C0", label=f"{tag}KL to SFT")
        axes[2].plot(x, [r["distinct_2"] / r["distinct_2_sft"] for r in rows], "s" + style, color="C1",
                     label=f"{tag}distinct-2 / SFT's")
        axes[2].plot(x, [r["mean_words"] / r["mean_words_sft"] for r in rows], "^" + style, color="C2",
                     label=f"{tag}mean words / SFT's")
    axes[0].set_title("Preference accuracy on the policy's answers")
    axes[1].set_title("Win rate vs SFT (held-out prompts)")
    axes[2].set_title("KL and diversity")
    rounds_seen = sorted({r["round"] for r in rounds})
    for ax in axes:
        ax.legend(fontsize=7)
        ax.set_xlabel("round")
        ax.set_xticks(rounds_seen)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# The settings a resumed run must share with the run it continues: they decide what the finished rounds did.
_FIXED_SETTINGS = ("method", "seed", "prompts_per_round", "num_responses_per_prompt", "held_out_fraction",
                   "dpo_reference")


def _check_resume(out: Path, args: RoundsArguments) -> None:
    """Refuse to continue the rounds in `out` with settings that would make its rounds a mix of two loops."""
    from ..config import ConfigError

    path, results = out / "settings.json", out / "rounds.json"
    wanted = {name: getattr(args, name) for name in _FIXED_SETTINGS}
    stored = json.loads(path.read_text()) if path.is_file() else {}
    finished = json.loads(results.read_text()) if results.is_file() else []
    if finished and "method" not in stored:  # rounds written before settings.json: their rows tell
        stored["method"] = _method(finished[0])
    if stored:
        changed = {k: (stored[k], v) for k, v in wanted.items() if k in stored and stored[k] != v}
        if changed:
            listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise ConfigError(f"{out} holds rounds made with other settings ({listed}). Continue them with the "
                              f"same settings, or pass another --output_dir for a new loop.")
    path.write_text(json.dumps(wanted, indent=2) + "\n")


def round_prompts(out: Path, r: int, args: RoundsArguments) -> list[str]:
    """Round r's fresh prompts: drawn with the round's seed, never the demo's PPO prompts nor an earlier round's.

    The earlier rounds' prompts are read from their `round<j>/prompts/train.jsonl`, not remembered, so a resumed
    run picks exactly what an uninterrupted run picks (and sample.py never meets a prompt it already answered)."""
    from ..config import UserError
    from ..data import read_jsonl
    from ..demo.corpus import review_prompts
    from .sampling import prompt_id

    used = {prompt_id(p) for p in review_prompts(1024, args.seed, "train")}  # the demo's PPO prompts are not fresh
    for j in range(1, r):
        path = out / f"round{j}" / "prompts" / "train.jsonl"
        if not path.is_file():
            raise UserError(f"{path} is missing: round {j}'s prompts, which round {r} must not reuse. Restore it, or "
                            f"start the rounds again in a new --output_dir.")
        used |= {prompt_id(row["prompt"]) for row in read_jsonl(path)}
    fresh, k = [], 0
    while len(fresh) < args.prompts_per_round:
        k += 1
        for prompt in review_prompts(args.prompts_per_round, seed=args.seed + 7919 * r + k, split="train"):
            if prompt_id(prompt) not in used and len(fresh) < args.prompts_per_round:
                used.add(prompt_id(prompt))
                fresh.append(prompt)
    return fresh


def _held_items(store, rows: list[dict[str, Any]]) -> list[tuple[str, list[str], list[int]]]:
    """(prompt, responses in sample order, the labeler's ranking as indices best first) of stored rankings."""
    held = []
    for row in rows:
        item = store.items[row["item_id"]]
        index = {text: i for i, text in enumerate(item.responses)}
        held.append((item.prompt, list(item.responses), [index[t] for t in row["responses"]]))
    return held


@torch.no_grad()
def _implicit_reward_accuracy(policy_path: str, reference_path: str,
                              items: list[tuple[str, list[str], list[int]]]) -> float:
    """Pairwise accuracy of DPO's implicit reward log pi(y|x) - log pi_ref(y|x) against the labeler's rankings
    (beta scales every reward alike, so it does not change an order)."""
    from trl import ModelConfig

    from ..data import encode_text
    from ..evaluation import _left_pad, sequence_logprobs
    from ..models import load_model, load_tokenizer

    tokenizer = load_tokenizer(policy_path, padding_side="left")
    load = lambda path: load_model(ModelConfig(model_name_or_path=path, dtype="float32"), tokenizer,  # noqa: E731
                                   apply_lora=False).eval()
    policy, reference = load(policy_path), load(reference_path)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    correct = total = 0
    for prompt, responses, ranking in items:
        ids = [tokenizer(r, add_special_tokens=False)["input_ids"] + [eos] for r in responses]
        width = max(len(a) for a in ids)
        answers = torch.tensor([a + [pad] * (width - len(a)) for a in ids], dtype=torch.long)
        queries = _left_pad([encode_text(tokenizer, prompt)] * len(ids), pad)
        scores = (sequence_logprobs(policy, queries, answers, pad)
                  - sequence_logprobs(reference, queries, answers, pad)).tolist()
        c, t = _pairwise_accuracy(scores, ranking)
        correct, total = correct + c, total + t
    return correct / total


def _fresh_output(path: Path) -> str:
    """A stage's output folder for this round, emptied first: a folder there that rounds.json does not name is
    what a stopped run left behind, never a finished stage of this loop."""
    if path.exists():
        shutil.rmtree(path)
    return str(path)


def _train_dpo(args: RoundsArguments, folder: Path, data: Path, policy: str, reference: str, seed: int) -> str:
    """recipes/dpo.py from `policy` against `reference` on the rankings gathered in `data`; the new policy's folder."""
    output = _fresh_output(folder / "dpo")
    _run("dpo", ["--config", args.dpo_config, "--model_name_or_path", policy, "--ref_model_path", reference,
                 "--dataset_name", str(data), "--output_dir", output, "--save_strategy", "no",
                 "--seed", str(seed),
                 *(["--num_train_epochs", str(args.dpo_epochs)] if args.dpo_epochs is not None else [])])
    return output


def run_rounds(args: RoundsArguments) -> list[dict[str, Any]]:
    from ..data import read_jsonl
    from ..demo.build import write_jsonl
    from ..demo.labeler import rank_responses
    from .gather import gather_comparisons
    from .jsonl import AppendLog
    from .sampling import prompt_id
    from .simulated import label_all
    from .store import LabelStore

    demo, out = Path(args.demo_dir), Path(args.output_dir)
    require_paths("demo_dir", demo, ("sft", "ppo", "reward", "data/heldout/prompts.jsonl", "data/reward/train.jsonl"),
                  "Build the demo first (`make demo`), or point --demo_dir at one.")
    out.mkdir(parents=True, exist_ok=True)
    _check_resume(out, args)
    sft, policy, reward = str(demo / "sft"), str(demo / "ppo"), str(demo / "reward")
    eval_prompts = [r["prompt"] for r in read_jsonl(demo / "data/heldout/prompts.jsonl")][: args.eval_prompts]
    base_rankings = read_jsonl(demo / "data/reward/train.jsonl")
    samples_file, comparisons_file = out / "samples.jsonl", out / "comparisons.jsonl"
    results_file = out / "rounds.json"
    rounds: list[dict[str, Any]] = json.loads(results_file.read_text()) if results_file.is_file() else []
    dpo = args.method == "dpo"
    if not rounds:
        start = time.time()
        reference = sft
        if dpo:  # the one-shot DPO policy: DPO from SFT on the rankings the one-shot RM learned from
            data = out / "round0/dpo_data"
            gather_comparisons([demo / "data/reward"], data)
            policy = _train_dpo(args, out / "round0", data, sft, sft, args.seed)
        rounds.append({"round": 0, "method": args.method, "comparisons": len(base_rankings), "new_rankings": 0,
                       "policy_path": policy, "reference_path": reference,
                       "rm_accuracy_on_policy_before": None, "rm_accuracy_on_policy_after": None,
                       **_evaluate(policy, sft, eval_prompts, args.seed, args.judges),
                       "seconds": round(time.time() - start, 1)})
        results_file.write_text(json.dumps(rounds, indent=2) + "\n")
    else:  # resume after the last finished round
        policy, reward = rounds[-1]["policy_path"], rounds[-1].get("reward_path", reward)

    for r in range(len(rounds), args.rounds + 1):
        start = time.time()
        folder = out / f"round{r}"
        # 1. fresh prompts, sampled from the current policy (and scored by the current RM)
        fresh = round_prompts(out, r, args)
        write_jsonl(folder / "prompts/train.jsonl", [{"prompt": p} for p in fresh])
        _run("sample", ["--model_name_or_path", policy, "--dtype", "float32",
                        *([] if dpo else ["--reward_model_path", reward]),
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
        held = _held_items(store, this_round[-n_held:])
        # 3. all rankings so far (held-out items of every round excluded)
        all_held = set().union(*(set(x.get("held_out_ids", [])) for x in rounds), held_ids)
        data = folder / ("dpo_data" if dpo else "reward_data")
        counts = gather_comparisons([demo / "data/reward", comparisons_file], data, exclude_item_ids=all_held)
        # rankings of answers this round's policy wrote (an item sampled earlier keeps an older policy's answers)
        sampled_by = {row["id"]: (row.get("policy") or {}).get("name_or_path") for row in AppendLog(samples_file).rows}
        record: dict[str, Any] = {"round": r, "method": args.method, "comparisons": counts["train"],
                                  "new_rankings": sum(sampled_by.get(row["item_id"]) == policy for row in this_round)}
        if dpo:
            # 4. DPO continues from the current policy on all rankings so far
            reference = sft if args.dpo_reference == "sft" else policy
            before = _implicit_reward_accuracy(policy, rounds[-1].get("reference_path", sft), held)
            policy = _train_dpo(args, folder, data, policy, reference, args.seed + r)
            after = _implicit_reward_accuracy(policy, reference, held)
        else:
            # 4a. a new RM from SFT on all comparisons so far
            before = _rm_accuracy(reward, held)
            new_reward = _fresh_output(folder / "reward")
            _run("reward", ["--config", args.reward_config, "--model_name_or_path", sft,
                            "--dataset_name", str(data), "--output_dir", new_reward,
                            "--normalization_dataset", str(demo / "data/sft"), "--num_train_epochs",
                            str(args.reward_epochs), "--save_strategy", "no", "--seed", str(args.seed + r)])
            after = _rm_accuracy(new_reward, held)
            # 4b. PPO continues from the current policy, reference pi_SFT, with the new RM
            reference, new_policy = sft, _fresh_output(folder / "ppo")
            _run("ppo", ["--config", args.ppo_config, "--model_name_or_path", sft,
                         "--sft_model_path", sft, "--policy_model_path", policy, "--reward_model_path", new_reward,
                         "--dataset_name", str(folder / "prompts"), "--ptx_dataset", str(demo / "data/ptx/train.jsonl"),
                         "--output_dir", new_policy, "--total_episodes", str(args.ppo_episodes),
                         "--save_strategy", "no", "--num_sample_generations", "0", "--seed", str(args.seed + r),
                         "--target_kl", str(args.ppo_target_kl or rounds[0]["kl"]),
                         "--kl_horizon", str(args.ppo_kl_horizon),
                         # beta carries on from where the last PPO run left it, and adapts within a round
                         *_kl_coef_flags(policy, args.ppo_carry_kl_coef)])
            policy, reward = new_policy, new_reward
            record["reward_path"] = reward
        # 5. evaluate
        rounds.append({**record, "policy_path": policy, "reference_path": reference,
                       "rm_accuracy_on_policy_before": before, "rm_accuracy_on_policy_after": after,
                       **_evaluate(policy, sft, eval_prompts, args.seed, args.judges), "held_out_ids": sorted(held_ids),
                       "seconds": round(time.time() - start, 1)})
        results_file.write_text(json.dumps(rounds, indent=2) + "\n")
        _plot(rounds, out / "rounds.png")
    _plot(rounds, out / "rounds.png")
    return rounds


def rounds_table(rounds: list[dict[str, Any]]) -> str:
    """The rounds as a Markdown table, one row per round (of one loop or of several: the method column tells)."""
    def f(value, digits=2):
        return "-" if value is None else f"{value:.{digits}f}"

    extra = _judge_names(rounds)
    head = ["method", "round", "comparisons", "RM acc. on policy (before -> after)", "labeler win rate vs SFT",
            *[f"{j} win rate" for j in extra], "KL to SFT", "distinct-2 (SFT)", "mean words (SFT)", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rounds:
        cells = [_method(r), str(r["round"]), str(r["comparisons"]),
                 f"{f(r['rm_accuracy_on_policy_before'])} -> {f(r['rm_accuracy_on_policy_after'])}",
                 f(r["labeler_win_rate"]), *[f(r[f"{j}_win_rate"]) for j in extra], f(r["kl"]),
                 f"{f(r['distinct_2'])} ({f(r['distinct_2_sft'])})", f"{f(r['mean_words'], 1)} ({f(r['mean_words_sft'], 1)})",
                 f(r.get("seconds"), 0)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass
class RoundsTableArguments:
    rounds_files: list[str] = field(metadata={"help": "rounds.json files written by recipes/iterate.py (one per loop, "
                                                      "e.g. PPO's and DPO's)."})
    output: str | None = field(default=None, metadata={"help": "Write every file's rows here (JSON), the table "
                                                               "beside it (.md) and the figure (.png)."})


def combine_rounds(args: RoundsTableArguments) -> list[dict[str, Any]]:
    """Several loops' rounds in one table (printed) and one figure, e.g. PPO's and DPO's rounds side by side:

        python -m rlhf_recipes.feedback.rounds --rounds_files runs/demo/iterate/rounds.json \\
            runs/demo/iterate-dpo/rounds.json --output docs/iterate/rounds.json
    """
    from ..config import UserError

    rounds = []
    for name in args.rounds_files:
        if not Path(name).is_file():
            raise UserError(f"{name}: no such rounds file; `make iterate` writes <output_dir>/rounds.json.")
        rounds += [{"method": _method(row), **row} for row in json.loads(Path(name).read_text())]
    table = rounds_table(rounds)
    print(table)
    if args.output:
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(rounds, indent=2) + "\n")
        output.with_suffix(".md").write_text(table + "\n")
        _plot(rounds, output.with_suffix(".png"))
    return rounds


if __name__ == "__main__":
    from ..config import run_main

    run_main(combine_rounds, (RoundsTableArguments,))
