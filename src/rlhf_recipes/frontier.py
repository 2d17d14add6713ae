"""Gold score against KL for every third stage on the demo: PPO, best-of-n, GRPO, RLOO, DPO and online DPO
(`make frontier`).

A reward model is a proxy. What a third stage buys is measured by a judge it was not trained on (on the demo, the
simulated labeler that ranked the reward model's training data: "gold" in Gao et al. 2023's terms) per unit of KL
from the SFT policy. This driver puts every method on one chart:

* PPO, GRPO and RLOO are trained with their demo recipes (same prompts, response length, temperature, missing-EOS
  penalty and episode budget), checkpointing along the way; GRPO and RLOO once per value of their KL coefficient
  `beta` (their main knob). Every checkpoint, and the SFT policy at episode 0, is one point. `--seeds 42 43 44`
  repeats every training run per seed (a single run's gold score varies by about 0.05 on the demo).
* DPO trains on the reward model's own training rankings (no reward model, no sampling), once per `beta`; its
  `episodes` are the preference pairs trained on so far. Online DPO samples two completions per prompt and lets the
  reward model pick the better, with the same episode budget as PPO (2 completions per prompt per step).
* Best-of-n samples n = 1, 2, 4, ..., 64 responses per prompt from the SFT policy and keeps the reward model's
  favourite; its KL is the analytic `log n - (n-1)/n`.

All points are evaluated on the same prompts, 256 review openings from templates no stage trained on
(`data/heldout/prompts.jsonl`), with the same sampling seed and evaluation.py's metrics: KL to SFT (sampled
log-ratio), the reward model's score (proxy), the labeler's mean score and its per-prompt win rate against the SFT
policy's response (gold), the win rates of two independent sentiment judges (VADER, AFINN: `demo/judges.py`), and
distinct-2 and mean words per response.
`wall_s` is the time from the start of the run to the checkpoint's save (training runs) or the sampling and
scoring time (best-of-n). `--merge_results frontier.json` keeps the points of the methods not run this time from an
earlier result, after checking it was measured against the same SFT policy and prompts. Output: `frontier.json` (a list of points), `frontier.png` and `frontier.md` (a table and
the summary lines quoted in the README).
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from trl import ModelConfig

from .best_of_n import best_of_n, best_of_n_kl
from .config import ConfigError, ScriptArguments, load_recipe_module, parse_recipe_args, require_paths, run_main
from .data import PAIR_SELECTIONS, load_stage_dataset
from .demo.judges import JUDGES, judge_scores
from .evaluation import EvalArguments, evaluate_policies
from .evaluation_metrics import distinct_n, markdown_table, mean_std, win_rate
from .models import load_model, load_tokenizer, score_responses

METHODS = ("ppo", "best_of_n", "grpo", "rloo", "dpo", "online_dpo")
POINT_KEYS = ("method", "run", "kl", "proxy_reward", "gold_win_rate", "gold_score", "vader_win_rate", "afinn_win_rate",
              "distinct_2", "mean_words", "episodes", "wall_s", "n", "beta", "seed", "checkpoint")


@dataclass
class FrontierArguments:
    """Arguments of `recipes/frontier.py`."""

    demo_dir: str = field(default="runs/demo", metadata={"help": "A built demo with its sft/ and reward/ stages."})
    output_dir: str | None = field(default=None, metadata={"help": "Default: <demo_dir>/frontier."})
    recipes_dir: str = field(default="recipes", metadata={"help": "Where ppo.py, grpo.py, rloo.py and demo/ live."})
    methods: list[str] = field(default_factory=lambda: list(METHODS), metadata={"choices": list(METHODS),
        "help": "Subset of " + str(METHODS)})
    eval_prompts: str | None = field(default=None, metadata={
        "help": "Prompts every point is evaluated on (a file or folder rlhf_recipes.data reads; default: the openings no stage "
                "trained on, <demo_dir>/data/heldout/prompts.jsonl)."})
    eval_split: str = field(default="train", metadata={"help": "Split of eval_prompts (a single file is 'train')."})
    num_prompts: int = field(default=256, metadata={"range": "[1, inf)",
        "help": "Use the first N prompts of that split."})
    judges: list[str] = field(default_factory=lambda: ["vader", "afinn"], metadata={"choices": list(JUDGES),
        "help": "Independent judges whose win rate vs SFT every point records (rlhf_recipes.demo.judges)."})
    episodes: int | None = field(default=None, metadata={"range": "[1, inf)",
        "help": "One episode budget for every training run (default: each demo recipe's own: PPO's "
                "total_episodes; GRPO's, RLOO's and online DPO's max_steps x 32 completions)."})
    checkpoints: int = field(default=8, metadata={"range": "[1, inf)",
        "help": "Checkpoints evaluated along each training run."})
    best_of_n: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64], metadata={"range": "[1, inf)"})
    grpo_betas: list[float] = field(default_factory=lambda: [0.05, 0.2, 0.5], metadata={"range": "[0, inf)"})
    rloo_betas: list[float] = field(default_factory=lambda: [0.05, 0.2, 0.5], metadata={"range": "[0, inf)"})
    dpo_betas: list[float] = field(default_factory=lambda: [0.03, 0.1, 0.3], metadata={"range": "(0, inf)",
        "help": "DPO's beta per run (the pull towards SFT; TRL's and the DPO paper's default is 0.1)."})
    dpo_ranking_pairs: list[str] = field(default_factory=lambda: ["best_vs_rest"], metadata={
        "choices": list(PAIR_SELECTIONS),
        "help": "The pairs DPO takes from each ranking, one run per value and beta (all, best_vs_rest, best_vs_worst)."})
    dpo_max_rankings: int | None = field(default=None, metadata={"range": "[1, inf)",
        "help": "Train DPO on the first N training rankings only (default: all of them, one epoch)."})
    online_dpo_betas: list[float] = field(default_factory=lambda: [0.1], metadata={"range": "(0, inf)"})
    merge_results: str | None = field(default=None, metadata={
        "help": "An earlier frontier.json: its points of the methods not in --methods are kept (refused when its "
                "SFT point differs from this run's, i.e. another demo, prompts or evaluation)."})
    seeds: list[int] = field(default_factory=lambda: [42], metadata={"range": "[0, 4294967295]",
        "help": "Training seeds: every PPO/GRPO/RLOO run is repeated per seed (one seed: the recipes' 42)."})
    response_length: int = field(default=24, metadata={"range": "[1, inf)",
        "help": "= the demo recipes' response length."})
    seed: int = field(default=1234, metadata={"range": "[0, 4294967295]",
        "help": "Evaluation sampling seed (= recipes/demo/evaluate.yaml)."})
    batch_size: int = field(default=64, metadata={"range": "[1, inf)",
        "help": "Prompts per generation batch in evaluation."})
    reuse_runs: bool = field(default=False, metadata={"help": "Evaluate existing run folders instead of training."})
    gold_thresholds: list[float] = field(default_factory=lambda: [0.75, 0.85],
                                         metadata={"range": "[0, 1]",
                                             "help": "The summary's 'time to labeler score / win rate X'."})


class Judge:
    """Everything the points are measured with: SFT reference, reward model, held-out prompts, SFT's gold scores."""

    def __init__(self, args: FrontierArguments) -> None:
        from .demo.labeler import labeler_score

        demo = Path(args.demo_dir)
        self.args, self.labeler = args, labeler_score
        self.tokenizer = load_tokenizer(str(demo / "sft"), padding_side="left")
        self.model_args = ModelConfig(model_name_or_path=str(demo / "sft"), dtype="float32")
        self.sft = self.load(demo / "sft")
        self.reward_model = load_model(self.model_args, self.tokenizer, kind="reward", role="reward",
                                       model_name_or_path=str(demo / "reward"), apply_lora=False).eval()
        source = args.eval_prompts or str(demo / "data/heldout/prompts.jsonl")
        dataset, _ = load_stage_dataset(ScriptArguments(dataset_name=source), "prompts")
        if args.eval_split not in dataset:
            raise ConfigError(f"{source} has no {args.eval_split!r} split (found {list(dataset)}); set --eval_split.")
        self.prompts = dataset[args.eval_split]["prompt"][: args.num_prompts]
        # The labeler and the judges score in `point`, against SFT's responses (evaluation.py's win rates would be
        # against the first policy of each call, i.e. the checkpoint itself).
        self.eval_args = EvalArguments(num_prompts=len(self.prompts), response_length=args.response_length,
                                       batch_size=args.batch_size, seed=args.seed)
        # Every point's gold and judge win rates are against these SFT responses (same prompts, same seed).
        self.sft_row, self.sft_texts = self.evaluate({"sft": self.sft})[0]
        self.sft_gold = self.gold(self.sft_texts)
        self.sft_judged = {name: judge_scores(name, self.sft_texts) for name in args.judges}

    def load(self, path: str | Path):
        return load_model(self.model_args, self.tokenizer, model_name_or_path=str(path), apply_lora=False).eval()

    def gold(self, texts: Sequence[str]) -> list[float]:
        return [self.labeler(p, t) for p, t in zip(self.prompts, texts)]

    def evaluate(self, policies: dict[str, Any]) -> list[tuple[dict[str, Any], list[str]]]:
        """evaluation.py's rows (KL to SFT, RM score, distinct-2) and the decoded responses per policy."""
        rows, samples = evaluate_policies(policies, self.tokenizer, self.prompts, reward_model=self.reward_model,
                                          reference=self.sft, args=self.eval_args)
        return [(row, samples[row["policy"]]) for row in rows]

    def point(self, row: dict[str, Any], texts: list[str], **extra: Any) -> dict[str, Any]:
        gold = self.gold(texts)
        return {"kl": row["kl_to_reference"], "proxy_reward": row["rm_score_mean"],
                "gold_win_rate": win_rate(gold, self.sft_gold), "gold_score": mean_std(gold)[0],
                **{f"{name}_win_rate": win_rate(judge_scores(name, texts), sft_scores)
                   for name, sft_scores in self.sft_judged.items()},
                "distinct_2": row["distinct_2"], "mean_words": mean_std([len(t.split()) for t in texts])[0], **extra}


def best_of_n_points(judge: Judge, ns: Sequence[int], penalty: float) -> list[dict[str, Any]]:
    """One point per n: the SFT policy's best of n samples by the reward model, which sees the missing-EOS penalty
    of the demo's PPO recipe (`penalty`)."""
    points = []
    tok = judge.tokenizer
    for n in ns:
        result = best_of_n(judge.sft, judge.reward_model, tok, judge.prompts, n=n,
                           response_length=judge.args.response_length, seed=judge.args.seed,
                           batch_size=min(judge.args.batch_size * n, 1024), missing_eos_penalty=penalty)
        # Proxy = the plain normalised RM score, as evaluation.py reports it for every other method.
        prompt_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in judge.prompts]
        proxy = score_responses(judge.reward_model, prompt_ids, result.response_ids, pad_token_id=tok.pad_token_id,
                                eos_token_id=tok.eos_token_id)
        row = {"kl_to_reference": best_of_n_kl(n), "rm_score_mean": proxy.mean().item(),
               "distinct_2": distinct_n(result.response_ids, 2)}
        points.append({"method": "best_of_n", "run": "best_of_n",
                       **judge.point(row, result.responses, episodes=n * len(judge.prompts), wall_s=result.wall_s),
                       "n": n})
    return points


def _checkpoints(run_dir: Path) -> list[Path]:
    found = [p for p in run_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def recipe_main(path: Path) -> Callable[[list[str]], Any]:
    """`recipes/<stage>.py`'s main as a function of its command line, run in this process."""
    module = load_recipe_module(path)
    return lambda argv: module.main(*parse_recipe_args(module.DATACLASSES, argv))


def train_run(recipe: Callable[[list[str]], Any], args: list[str], run_dir: Path, reuse: bool) -> float:
    """Run a recipe in this process (unless reusing its folder); returns the start time checkpoints are timed from."""
    start_file = run_dir / "frontier_start_time.json"
    if reuse and _checkpoints(run_dir) and start_file.is_file():
        return json.loads(start_file.read_text())["start"]
    start = time.time()
    recipe(args)
    start_file.write_text(json.dumps({"start": start}) + "\n")
    return start


def run_points(judge: Judge, method: str, run: str, run_dir: Path, start: float, budget: int,
               **extra: Any) -> list[dict[str, Any]]:
    """Evaluate every checkpoint of a training run, plus the SFT policy as its episode-0 point."""
    points = [{**judge.point(judge.sft_row, judge.sft_texts, episodes=0, wall_s=0.0), "method": method, "run": run,
               **extra, "checkpoint": "sft"}]
    for checkpoint in _checkpoints(run_dir):
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        episodes = round(budget * state["global_step"] / state["max_steps"])
        # The checkpoint's save time (its trainer_state.json is written last) relative to the run's start.
        wall = (checkpoint / "trainer_state.json").stat().st_mtime - start
        (row, texts), = judge.evaluate({checkpoint.name: judge.load(checkpoint)})
        points.append({**judge.point(row, texts, episodes=episodes, wall_s=wall), "method": method, "run": run,
                       **extra, "checkpoint": str(checkpoint)})
    return points


def recipe_episodes(recipes: Path, method: str) -> int:
    """A demo recipe's own budget in completions sampled, as the recipe parses it: PPO's `total_episodes`; GRPO's and
    RLOO's max_steps x per-step batch of completions; online DPO's max_steps x prompts per step x 2."""
    module = load_recipe_module(recipes / f"{method}.py")
    _, training_args, _ = parse_recipe_args(module.DATACLASSES, ["--config", str(recipes / f"demo/{method}.yaml")])
    if method == "ppo":
        return training_args.total_episodes
    per_step = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
    return training_args.max_steps * per_step * (2 if method == "online_dpo" else 1)


def dpo_schedule(recipe: Path, argv: list[str]) -> tuple[int, int]:
    """(optimizer steps, pairs trained on) of a DPO run: the recipe's dataset and pair selection, as it loads them."""
    module = load_recipe_module(recipe)
    script_args, training_args, _ = parse_recipe_args(module.DATACLASSES, argv)
    dataset, _ = load_stage_dataset(script_args, "dpo", pair_selection=training_args.ranking_pairs)
    pairs = len(dataset["train"])
    per_step = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
    steps = training_args.max_steps if training_args.max_steps > 0 \
        else math.ceil(pairs / per_step) * math.ceil(training_args.num_train_epochs)
    return steps, min(pairs * math.ceil(training_args.num_train_epochs), steps * per_step)


def kept_points(path: str | Path, sft_point: dict[str, Any], methods: Sequence[str]) -> list[dict[str, Any]]:
    """The points of an earlier `frontier.json` whose method is not in `methods`, if it measured the same SFT policy
    on the same prompts (its SFT points equal `sft_point`)."""
    earlier = json.loads(Path(path).read_text())
    starts = [p for p in earlier if p.get("checkpoint") == "sft"]
    keys = ("gold_score", "proxy_reward", "distinct_2", "mean_words")
    for start in starts:
        if any(abs(start[k] - sft_point[k]) > 1e-6 for k in keys if k in start):
            raise ConfigError(
                f"{path} was measured against another SFT policy or prompts (its SFT point "
                f"{ {k: start[k] for k in keys} } vs this run's { {k: sft_point[k] for k in keys} }): rerun those "
                "methods with --methods instead of merging.")
    if not starts:
        raise ConfigError(f"{path} has no SFT point (checkpoint 'sft') to check it against this run: rerun instead.")
    return [p for p in earlier if p["method"] not in methods]


def run_frontier(args: FrontierArguments) -> list[dict[str, Any]]:
    """Train, evaluate and write `frontier.json`, `frontier.png` and `frontier.md`; returns the points."""
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        raise ConfigError(f"Unknown method(s) {sorted(unknown)} in --methods; choose from {METHODS}.")
    demo, recipes = Path(args.demo_dir), Path(args.recipes_dir)
    require_paths("demo_dir", demo, ("sft", "reward", "data/prompts", "data/heldout"),
                  "Build the demo first (`make demo`), or point --demo_dir at one.")
    out = Path(args.output_dir or demo / "frontier")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    judge = Judge(args)
    # Checked before anything trains: merging points measured against another SFT policy would mislead.
    kept = kept_points(args.merge_results, judge.point(judge.sft_row, judge.sft_texts), args.methods) \
        if args.merge_results else []
    common = ["--sft_model_path", str(demo / "sft"), "--model_name_or_path", str(demo / "sft"),
              "--reward_model_path", str(demo / "reward"), "--dataset_name", str(demo / "data/prompts"),
              "--save_strategy", "steps", "--save_total_limit", "1000", "--report_to", "none",
              "--overwrite_output_dir", "true"]  # a run is retrained only when not reused (train_run)
    points: list[dict[str, Any]] = []
    if "best_of_n" in args.methods:
        # The recipe as PPO parses it, so that a key the YAML leaves out has PPOConfig's default.
        ppo = load_recipe_module(recipes / "ppo.py")
        _, ppo_args, _ = parse_recipe_args(ppo.DATACLASSES, ["--config", str(recipes / "demo/ppo.yaml")])
        points += best_of_n_points(judge, args.best_of_n, ppo_args.missing_eos_penalty or 0.0)
    for seed in args.seeds:
        # One seed keeps the recipes' names; several add the seed to every run's name and folder.
        tag = "" if len(args.seeds) == 1 else f" seed={seed}"
        folder = "" if len(args.seeds) == 1 else f"-seed{seed}"
        seeded = [*common, "--seed", str(seed)]
        if "ppo" in args.methods:
            run_dir = out / f"ppo{folder}"
            episodes = args.episodes or recipe_episodes(recipes, "ppo")
            updates = episodes // 64  # the demo recipe's update: 32 episodes x 2 minibatches
            extra = ["--config", str(recipes / "demo/ppo.yaml"), *seeded, "--output_dir", str(run_dir),
                     "--ptx_dataset", str(demo / "data/ptx/train.jsonl"), "--total_episodes", str(episodes),
                     "--save_steps", str(max(1, updates // args.checkpoints)), "--num_sample_generations", "0"]
            start = train_run(recipe_main(recipes / "ppo.py"), extra, run_dir, args.reuse_runs)
            points += run_points(judge, "ppo", f"ppo (demo recipe){tag}", run_dir, start, episodes, seed=seed)
        for method, betas in (("grpo", args.grpo_betas), ("rloo", args.rloo_betas)):
            if method not in args.methods:
                continue
            episodes = args.episodes or recipe_episodes(recipes, method)
            steps = episodes // 32  # 32 completions (4 prompts x 8) per step in the demo recipes
            for beta in betas:
                run_dir = out / f"{method}-beta{beta:g}{folder}"
                extra = ["--config", str(recipes / f"demo/{method}.yaml"), *seeded, "--output_dir", str(run_dir),
                         "--beta", str(beta), "--max_steps", str(steps),
                         "--save_steps", str(max(1, steps // args.checkpoints))]
                start = train_run(recipe_main(recipes / f"{method}.py"), extra, run_dir, args.reuse_runs)
                points += run_points(judge, method, f"{method} beta={beta:g}{tag}", run_dir, start, episodes,
                                     beta=beta, seed=seed)
        if "online_dpo" in args.methods:
            episodes = args.episodes or recipe_episodes(recipes, "online_dpo")
            steps = episodes // 32  # 32 completions (16 prompts x 2) per step in the demo recipe
            for beta in args.online_dpo_betas:
                run_dir = out / f"online_dpo-beta{beta:g}{folder}"
                extra = ["--config", str(recipes / "demo/online_dpo.yaml"), *seeded, "--output_dir", str(run_dir),
                         "--beta", str(beta), "--max_steps", str(steps),
                         "--save_steps", str(max(1, steps // args.checkpoints))]
                start = train_run(recipe_main(recipes / "online_dpo.py"), extra, run_dir, args.reuse_runs)
                points += run_points(judge, "online_dpo", f"online_dpo beta={beta:g}{tag}", run_dir, start,
                                     episodes, beta=beta, seed=seed)
        if "dpo" in args.methods:
            # The reward model's own training rankings, from the SFT policy; no reward model, no sampling.
            for beta, selection in itertools.product(args.dpo_betas, args.dpo_ranking_pairs):
                named = "" if len(args.dpo_ranking_pairs) == 1 else f" pairs={selection}"
                run_dir = out / f"dpo-beta{beta:g}{named.replace(' pairs=', '-')}{folder}"
                extra = ["--config", str(recipes / "demo/dpo.yaml"), "--model_name_or_path", str(demo / "sft"),
                         "--dataset_name", str(demo / "data/reward"), "--output_dir", str(run_dir),
                         "--beta", str(beta), "--ranking_pairs", selection, "--seed", str(seed),
                         "--save_strategy", "steps", "--save_total_limit", "1000", "--report_to", "none"]
                if args.dpo_max_rankings is not None:
                    extra += ["--max_train_samples", str(args.dpo_max_rankings)]
                steps, pairs = dpo_schedule(recipes / "dpo.py", extra)
                extra += ["--save_steps", str(max(1, steps // args.checkpoints))]
                start = train_run(recipe_main(recipes / "dpo.py"), extra, run_dir, args.reuse_runs)
                points += run_points(judge, "dpo", f"dpo beta={beta:g}{named}{tag}", run_dir, start, pairs,
                                     beta=beta, seed=seed)
    points += kept  # the earlier result's other methods, after this run's
    points = [{k: p[k] for k in POINT_KEYS if k in p} for p in points]
    write_frontier(out, points, args.gold_thresholds)
    return points


def time_to(points: list[dict[str, Any]], run: str, key: str, threshold: float) -> float | None:
    """Wall seconds of the first checkpoint of `run` whose `key` reaches `threshold` (None if never)."""
    reached = [p["wall_s"] for p in points if p["run"] == run and p[key] >= threshold]
    return min(reached) if reached else None


def summary_lines(points: list[dict[str, Any]], thresholds: Sequence[float] = (0.85,)) -> list[str]:
    """The comparisons the README quotes: each run's final point, the wall time to a labeler score (and win rate) of
    each threshold, and PPO's final win rate against the best GRPO/RLOO point at equal or higher KL."""
    lines = []
    runs = sorted({p["run"] for p in points if p["method"] != "best_of_n"})
    for run in runs:
        final = max((p for p in points if p["run"] == run), key=lambda p: p["episodes"])
        times = "; ".join(f"time to labeler score {t:g}: {_fmt_s(time_to(points, run, 'gold_score', t))}, to win "
                          f"rate {t:g}: {_fmt_s(time_to(points, run, 'gold_win_rate', t))}" for t in thresholds)
        judged = "".join(f", {key[: -len('_win_rate')]} win rate {final[key]:.3f}" for key in final
                         if key.endswith("_win_rate") and key != "gold_win_rate")
        lines.append(f"- {run}: final KL {final['kl']:.2f}, labeler score {final['gold_score']:.3f}, win rate vs SFT "
                     f"{final['gold_win_rate']:.3f}{judged}, distinct-2 {final['distinct_2']:.3f}, "
                     f"{final['mean_words']:.1f} words; {times}")
    bon = sorted((p for p in points if p["method"] == "best_of_n"), key=lambda p: p["n"])
    for threshold in thresholds:
        first = next((p for p in bon if p["gold_score"] >= threshold), None)
        if first is not None:
            lines.append(f"- best-of-n first reaches labeler score {threshold:g} at n = {first['n']} (KL "
                         f"{first['kl']:.2f}, win rate {first['gold_win_rate']:.3f}, {first['wall_s']:.0f} s)")
    for run in sorted({p["run"] for p in points if p["method"] == "ppo"}):
        final = max((p for p in points if p["run"] == run), key=lambda p: p["episodes"])
        others = [p for p in points if p["method"] in ("grpo", "rloo") and p["kl"] >= final["kl"]]
        best = max(others, key=lambda p: p["gold_win_rate"], default=None)
        head = f"- {run} at its final KL {final['kl']:.2f}: win rate {final['gold_win_rate']:.3f}; "
        if best is not None:
            lines.append(f"{head}the best GRPO/RLOO point at equal or higher KL: {best['run']} at {best['episodes']} "
                         f"episodes, KL {best['kl']:.2f}, win rate {best['gold_win_rate']:.3f}")
        elif any(p["method"] in ("grpo", "rloo") for p in points):
            lines.append(f"{head}no GRPO/RLOO point reaches that KL")
    if len({p.get("seed") for p in points if p["method"] != "best_of_n"}) > 1:
        for run in sorted({p["run"].rsplit(" seed=", 1)[0] for p in points if p["method"] != "best_of_n"}):
            finals = [max((p for p in points if p["run"] == r), key=lambda p: p["episodes"])
                      for r in {p["run"] for p in points if p["run"].rsplit(" seed=", 1)[0] == run}]
            means = {k: mean_std([p[k] for p in finals])[0] for k in ("kl", "gold_score", "gold_win_rate")}
            lines.append(f"- {run}, mean of {len(finals)} seeds at the end: KL {means['kl']:.2f}, labeler score "
                         f"{means['gold_score']:.3f}, win rate {means['gold_win_rate']:.3f}")
    return lines


def _fmt_s(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.0f} s"


def write_frontier(out: Path, points: list[dict[str, Any]], thresholds: Sequence[float] = (0.85,)) -> None:
    from .plots import plot_frontier

    (out / "frontier.json").write_text(json.dumps(points, indent=2) + "\n")
    plot_frontier(points, out / "frontier.png")
    columns = ["run", "episodes", "kl", "proxy_reward", "gold_score", "gold_win_rate", "vader_win_rate",
               "afinn_win_rate", "distinct_2", "mean_words", "wall_s"]
    (out / "frontier.md").write_text("# Frontier\n\n" + "\n".join(summary_lines(points, thresholds)) + "\n\n"
                                     + markdown_table(points, columns) + "\n")


def _main(args: FrontierArguments) -> list[dict[str, Any]]:
    points = run_frontier(args)
    print("\n".join(summary_lines(points, args.gold_thresholds)))
    print(f"Wrote {len(points)} points to {Path(args.output_dir or Path(args.demo_dir) / 'frontier')}")
    return points


__all__ = ["FrontierArguments", "run_frontier", "summary_lines", "time_to"]

def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """`python -m rlhf_recipes.frontier`: a user error exits 2 with one paragraph, as every recipe does."""
    return run_main(_main, (FrontierArguments,), argv)


if __name__ == "__main__":
    main()
