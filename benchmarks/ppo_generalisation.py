"""Which PPO settings make the demo's policy generalise? Train PPO variants on the built demo and judge each on the
held-out openings that no stage trained on (and on the PPO test split), against SFT.

    python benchmarks/ppo_generalisation.py                          # every variant in VARIANTS, in order
    python benchmarks/ppo_generalisation.py --variants today kl3     # some of them
    python benchmarks/ppo_generalisation.py --list
    python benchmarks/ppo_generalisation.py --demo_dir runs/demo2 --tag @mydemo   # another demo build, named rows

Each variant is `recipes/demo/ppo.yaml` (the demo default, whatever it is now) plus the flags in `VARIANTS`, run as
`python recipes/ppo.py ...` on `--demo_dir`'s SFT model, reward model and prompts (same 2048-episode budget unless a
variant says otherwise), then `recipes/evaluate.py` with the sentiment judges on `data/heldout/prompts.jsonl` (256
prompts) and on the prompts' test split (64). Results accumulate in `--results` (`.json`, one record per variant and
seed, a rerun replaces its record) and are rendered to the `.md` beside it, with the goal check set before the sweep:
on held-out prompts, both judges' win rate vs SFT >= 0.8, distinct-2 and mean words >= 0.9x SFT's, labeler win rate
vs SFT >= 0.85.

PPO runs with one thread (`OMP_NUM_THREADS=1`, `nice -n 10`): this is a shared 2-core machine. Wall times are
therefore noisy; the quality numbers are deterministic given the seed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from rlhf_recipes.evaluation_metrics import markdown_table  # noqa: E402

# Flags on top of recipes/demo/ppo.yaml. "before" pins the settings the demo shipped with before this study (where
# entropy_coef and min_response_length did not exist, i.e. were 0), so every variant stays reproducible after the YAML
# changed.
BEFORE = {"kl_coef": 0.2, "target_kl": 6.0, "kl_horizon": 1024, "ptx_coef": 0.1, "learning_rate": 3.0e-4,
          "missing_eos_penalty": 1.0, "num_ppo_epochs": 4, "entropy_coef": 0.0, "min_response_length": 0}
# The default from the reward model on SFT's own answers (@sftrm) until the frontier of judge win and diversity
# chose another ("chosen"): rows named "default..." are relative to it.
EARLIER = {"entropy_coef": 0.02, "total_episodes": 2048}
VARIANTS: dict[str, dict] = {
    "before": BEFORE,
    "default": EARLIER,
    # first round: one knob at a time from "before"
    "lr1e-4": {**BEFORE, "learning_rate": 1.0e-4},
    "ptx0.5": {**BEFORE, "ptx_coef": 0.5},
    "eos0": {**BEFORE, "missing_eos_penalty": 0.0},
    "target3": {**BEFORE, "target_kl": 3.0},
    "beta0.05": {**BEFORE, "kl_coef": 0.05},
    "epochs2": {**BEFORE, "num_ppo_epochs": 2},
    "fixed-beta0.2": {**BEFORE, "kl_horizon": 1_000_000_000},  # the adaptive controller barely moves: fixed beta
    "ptx0": {**BEFORE, "ptx_coef": 0.0},
    # second round: ptx keeps length and diversity (ptx0.5); push the judges' win with more optimisation on top
    "ptx1": {**BEFORE, "ptx_coef": 1.0},
    "ptx0.5-beta0.05": {**BEFORE, "ptx_coef": 0.5, "kl_coef": 0.05},
    "ptx1-beta0.05": {**BEFORE, "ptx_coef": 1.0, "kl_coef": 0.05},
    "ptx1-target10": {**BEFORE, "ptx_coef": 1.0, "target_kl": 10.0},
    # no missing-EOS penalty (eos0) lifts the judges; ptx brings length and diversity back
    "ptx0.5-eos0": {**BEFORE, "ptx_coef": 0.5, "missing_eos_penalty": 0.0},
    "ptx1-eos0": {**BEFORE, "ptx_coef": 1.0, "missing_eos_penalty": 0.0},
    "ptx0.5-eos0-beta0.05": {**BEFORE, "ptx_coef": 0.5, "missing_eos_penalty": 0.0, "kl_coef": 0.05},
    "ptx1-eos0-target10": {**BEFORE, "ptx_coef": 1.0, "missing_eos_penalty": 0.0, "target_kl": 10.0},
    # third round: terms that target what drifts (length, diversity) instead of holding the whole policy back
    "eos0-beta0.05": {**BEFORE, "missing_eos_penalty": 0.0, "kl_coef": 0.05},
    "eos0-minlen12": {**BEFORE, "missing_eos_penalty": 0.0, "min_response_length": 12},
    "eos0-ent0.02": {**BEFORE, "missing_eos_penalty": 0.0, "entropy_coef": 0.02},
    # eos0-beta0.05 wins on every judge but collapses diversity and length: add the terms to it
    "eos0-beta0.05-ent0.02-minlen12": {**BEFORE, "missing_eos_penalty": 0.0, "kl_coef": 0.05, "entropy_coef": 0.02,
                                       "min_response_length": 12},
    "eos0-beta0.05-ent0.05-minlen12": {**BEFORE, "missing_eos_penalty": 0.0, "kl_coef": 0.05, "entropy_coef": 0.05,
                                       "min_response_length": 12},
    "eos0-beta0.05-ent0.1-minlen12": {**BEFORE, "missing_eos_penalty": 0.0, "kl_coef": 0.05, "entropy_coef": 0.1,
                                      "min_response_length": 12},
    "eos0-beta0.1-ent0.03-minlen12": {**BEFORE, "missing_eos_penalty": 0.0, "kl_coef": 0.1, "entropy_coef": 0.03,
                                      "min_response_length": 12},
    "ptx0.5-beta0.1": {**BEFORE, "ptx_coef": 0.5, "kl_coef": 0.1},
    "ptx0.3": {**BEFORE, "ptx_coef": 0.3},
    "eos0-beta0.05-lr1e-4": {**BEFORE, "missing_eos_penalty": 0.0, "kl_coef": 0.05, "learning_rate": 1.0e-4},
    "ptx0.5-beta0.1-lr1e-4": {**BEFORE, "ptx_coef": 0.5, "kl_coef": 0.1, "learning_rate": 1.0e-4},
    "eos0-beta0.02-target15-ent0.05-minlen12": {**BEFORE, "missing_eos_penalty": 0.0, "kl_coef": 0.02,
                                                "target_kl": 15.0, "entropy_coef": 0.05, "min_response_length": 12},
    "eos0-beta0.05-ent0.035-minlen12": {**BEFORE, "missing_eos_penalty": 0.0, "kl_coef": 0.05,
                                        "entropy_coef": 0.035, "min_response_length": 12},
    # around the default of the time (EARLIER): gentler updates, more KL for the entropy bonus
    "default-epochs2": {**EARLIER, "num_ppo_epochs": 2},
    "default-clip0.1": {**EARLIER, "cliprange": 0.1},
    "default-beta0.03-ent0.03": {**EARLIER, "kl_coef": 0.03, "entropy_coef": 0.03},
    "default-k3": {**EARLIER, "kl_estimator": "k3"},
    "default-clip0.1-beta0.03": {**EARLIER, "cliprange": 0.1, "kl_coef": 0.03},
    "default-ent0.01": {**EARLIER, "entropy_coef": 0.01},
    "default-k3-ent0.05": {**EARLIER, "kl_estimator": "k3", "entropy_coef": 0.05},
    "default-k3-ent0.08": {**EARLIER, "kl_estimator": "k3", "entropy_coef": 0.08},
    # more distinct PPO prompts (each episode a new one) instead of the demo's 1024 seen twice
    "default-prompts2048": {**EARLIER, "num_train_prompts": 2048},
    "ptx0.5-eos0-beta0.05-ent0.05-minlen12": {**BEFORE, "ptx_coef": 0.5, "missing_eos_penalty": 0.0, "kl_coef": 0.05,
                                              "entropy_coef": 0.05, "min_response_length": 12},
    # with the reward model that also learned rankings of SFT's own samples (the judges' win has room to spare):
    # spend it on diversity
    "default-ent0.05": {**EARLIER, "entropy_coef": 0.05},
    "default-ent0.035": {**EARLIER, "entropy_coef": 0.035},
    "default-beta0.1": {**EARLIER, "kl_coef": 0.1},
    "default-beta0.1-ent0.035": {**EARLIER, "kl_coef": 0.1, "entropy_coef": 0.035},
    "default-target3": {**EARLIER, "target_kl": 3.0},
    "default-ptx0.5": {**EARLIER, "ptx_coef": 0.5},
    # the KL-regularised optimum pi_SFT * exp(r / beta) is near-argmax (collapsed) for a small beta: a fixed,
    # larger beta
    "default-fixedbeta0.3": {**EARLIER, "kl_coef": 0.3, "kl_horizon": 1_000_000_000},
    "default-fixedbeta0.5": {**EARLIER, "kl_coef": 0.5, "kl_horizon": 1_000_000_000},
    "default-fixedbeta0.3-lr6e-4": {**EARLIER, "kl_coef": 0.3, "kl_horizon": 1_000_000_000, "learning_rate": 6.0e-4},
    "default-fixedbeta0.2-ent0": {**EARLIER, "kl_coef": 0.2, "kl_horizon": 1_000_000_000, "entropy_coef": 0.0},
    "default-fixedbeta0.4": {**EARLIER, "kl_coef": 0.4, "kl_horizon": 1_000_000_000},
    "default-fixedbeta0.3-ent0.035": {**EARLIER, "kl_coef": 0.3, "kl_horizon": 1_000_000_000, "entropy_coef": 0.035},
    # the default on the frontier of (judge win, diversity). The 2048-episode run's checkpoint at
    # 1024 episodes already had both judges >= 0.8 at 0.86x SFT's distinct-2 (docs/frontier/frontier.json): stop
    # earlier, or hold the policy nearer SFT for the whole run
    "default-episodes1024": {**EARLIER, "total_episodes": 1024},
    "default-episodes1280": {**EARLIER, "total_episodes": 1280},
    "default-episodes1536": {**EARLIER, "total_episodes": 1536},
    "default-target4": {**EARLIER, "target_kl": 4.0},
    "default-fixedbeta0.2": {**EARLIER, "kl_coef": 0.2, "kl_horizon": 1_000_000_000},
    "default-fixedbeta0.3-episodes3072": {**EARLIER, "kl_coef": 0.3, "kl_horizon": 1_000_000_000, "total_episodes": 3072},
    "default-ent0.04-episodes1024": {**EARLIER, "entropy_coef": 0.04, "total_episodes": 1024},
    "default-epochs2-episodes1024": {**EARLIER, "num_ppo_epochs": 2, "total_episodes": 1024},
    # a shorter run keeps diversity, a larger entropy bonus more of it: between the two
    "default-ent0.03-episodes1024": {**EARLIER, "entropy_coef": 0.03, "total_episodes": 1024},
    "default-ent0.03-episodes1280": {**EARLIER, "entropy_coef": 0.03, "total_episodes": 1280},
    "default-ent0.04-episodes1280": {**EARLIER, "entropy_coef": 0.04, "total_episodes": 1280},
    "default-ent0.04-episodes1536": {**EARLIER, "entropy_coef": 0.04, "total_episodes": 1536},
    "default-ent0.04": {**EARLIER, "entropy_coef": 0.04},
    "default-ent0.05-episodes1536": {**EARLIER, "entropy_coef": 0.05, "total_episodes": 1536},
    # fp32 (a CPU without AMX) ends lower on the judges at the chosen setting: a little more optimisation
    "default-ent0.04-episodes1792": {**EARLIER, "entropy_coef": 0.04, "total_episodes": 1792},
    "default-ent0.035-episodes1536": {**EARLIER, "entropy_coef": 0.035, "total_episodes": 1536},
    # the default chosen from the rows above: recipes/demo/ppo.yaml as it is now
    "chosen": {},
}

GOAL = {"judge_win": 0.8, "ratio": 0.9, "labeler_win": 0.85}
JUDGES = ("vader", "afinn")
# The frontier goal: both judges >= 0.8 at no less diversity than best-of-16 picked by the gold labeler itself
CEILING = REPO / "benchmarks/results/best-of-n-ceiling.json"


def frontier_goal_ratio() -> float:
    """distinct-2 (x SFT) of the gold best-of-16 point, as `benchmarks/best_of_n_ceiling.py` measured it."""
    rows = json.loads(CEILING.read_text())["rows"]
    return next(r["distinct_2_ratio"] for r in rows if r["n"] == 16 and r["selector"] != "reward model")


def _run(cmd: list[str], log: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": str(REPO / "src")}
    start = time.perf_counter()
    with open(log, "w") as handle:
        proc = subprocess.run(["nice", "-n", "10", *cmd], cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed (exit {proc.returncode}); see {log}")
    return time.perf_counter() - start


def _flags(overrides: dict) -> list[str]:
    out = []
    for key, value in overrides.items():
        out += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return out


def _evaluate(demo: Path, policy: Path, dataset: Path, num_prompts: int, out: Path, log: Path) -> dict:
    cmd = [sys.executable, "recipes/evaluate.py", "--config", "recipes/demo/evaluate_heldout.yaml",
           "--dataset_name", str(dataset), "--policy_paths", str(demo / "sft"), str(policy),
           "--policy_names", "sft", "ppo", "--reward_model_path", str(demo / "reward"),
           "--reference_model_path", str(demo / "sft"), "--num_prompts", str(num_prompts), "--output_dir", str(out)]
    _run(cmd, log)
    sft, ppo = json.loads((out / "eval_results.json").read_text())["results"]
    return {
        "labeler_win": ppo["labeler_win_vs_first"], "rm_win": ppo["win_rate_vs_first"],
        **{f"{j}_win": ppo[f"{j}_win_vs_first"] for j in JUDGES},
        "distinct_2_ratio": ppo["distinct_2"] / sft["distinct_2"], "words_ratio": ppo["mean_words"] / sft["mean_words"],
        "kl": ppo["kl_to_reference"], "words": ppo["mean_words"], "sft_words": sft["mean_words"],
        "distinct_2": ppo["distinct_2"], "sft_distinct_2": sft["distinct_2"],
    }


def meets_frontier_goal(heldout: dict, ratio: float) -> bool:
    return all(heldout[f"{j}_win"] >= GOAL["judge_win"] for j in JUDGES) and heldout["distinct_2_ratio"] >= ratio


def meets_goal(heldout: dict) -> bool:
    return (all(heldout[f"{j}_win"] >= GOAL["judge_win"] for j in JUDGES)
            and heldout["distinct_2_ratio"] >= GOAL["ratio"] and heldout["words_ratio"] >= GOAL["ratio"]
            and heldout["labeler_win"] >= GOAL["labeler_win"])


def _prompt_set(demo: Path, work: Path, num_train: int) -> Path:
    """The demo's prompts folder with `num_train` training prompts (same generator and seed as the build)."""
    from rlhf_recipes.demo.build import write_jsonl
    from rlhf_recipes.demo.corpus import review_prompts

    folder = work / f"prompts-{num_train}"
    write_jsonl(folder / "train.jsonl", [{"prompt": p} for p in review_prompts(num_train, 0, "train")])
    (folder / "test.jsonl").write_text((demo / "data/prompts/test.jsonl").read_text())
    return folder


def run_variant(name: str, overrides: dict, seed: int, demo: Path, work: Path, retrain: bool,
                auto_bf16: bool = False) -> dict:
    out = work / f"{name}-s{seed}"
    out.mkdir(parents=True, exist_ok=True)
    ppo_overrides = {k: v for k, v in overrides.items() if k != "num_train_prompts"}
    prompts = _prompt_set(demo, work, overrides["num_train_prompts"]) if "num_train_prompts" in overrides \
        else demo / "data/prompts"
    wall_file = out / "ppo_wall_s.json"
    ppo_flags = ["--sft_model_path", str(demo / "sft"), "--model_name_or_path", str(demo / "sft"),
                 "--reward_model_path", str(demo / "reward"), "--dataset_name", str(prompts),
                 "--ptx_dataset", str(demo / "data/ptx/train.jsonl"), "--output_dir", str(out / "ppo"),
                 "--save_strategy", "no", "--seed", str(seed), "--overwrite_output_dir", "true",
                 *_flags(ppo_overrides), *(["--auto_bf16", "true"] if auto_bf16 else [])]
    cmd = [sys.executable, "recipes/ppo.py", "--config", "recipes/demo/ppo.yaml", *ppo_flags]
    if retrain or not wall_file.is_file():  # else: a finished run of the same flags, re-evaluated only
        wall_file.write_text(json.dumps(_run(cmd, out / "ppo.log")))
    wall = json.loads(wall_file.read_text())
    metrics = json.loads((out / "ppo" / "stage_metrics.json").read_text())
    heldout = _evaluate(demo, out / "ppo", demo / "data/heldout/prompts.jsonl", 256, out / "eval_heldout",
                        out / "eval_heldout.log")
    test = _evaluate(demo, out / "ppo", demo / "data/prompts", 64, out / "eval_test", out / "eval_test.log")
    return {"variant": name, "seed": seed, "overrides": overrides, "ppo_wall_s": round(wall, 1),
            "train_kl": metrics.get("objective/kl"), "train_score": metrics.get("objective/scores"),
            "heldout": heldout, "test": test, "meets_goal": meets_goal(heldout), "auto_bf16": auto_bf16,
            "command": "python recipes/ppo.py --config recipes/demo/ppo.yaml "
                       + shlex.join(_flags(overrides) + (["--auto_bf16", "true"] if auto_bf16 else []))}


def render(records: list[dict]) -> str:
    ratio = frontier_goal_ratio()
    rows = []
    for r in records:
        h, t = r["heldout"], r["test"]
        rows.append({
            "variant": r["variant"], "seed": r["seed"], "flags on ppo.yaml": " ".join(_flags(r["overrides"])) or "-",
            "vader win": h["vader_win"], "afinn win": h["afinn_win"], "labeler win": h["labeler_win"],
            "distinct-2 x SFT": h["distinct_2_ratio"], "words x SFT": h["words_ratio"], "KL": h["kl"],
            "test: labeler win": t["labeler_win"], "test: vader/afinn": f"{t['vader_win']:.3g}/{t['afinn_win']:.3g}",
            "PPO s": r["ppo_wall_s"], "goal": "yes" if r["meets_goal"] else "no",
            "frontier goal": "yes" if meets_frontier_goal(h, ratio) else "no",
        })
    columns = list(rows[0]) if rows else ["variant"]
    return "\n".join([
        "# PPO generalisation on the demo (written by `python benchmarks/ppo_generalisation.py`)", "",
        "Each row: `recipes/demo/ppo.yaml` plus the flags shown, trained on the demo's SFT/RM, judged "
        "on the 256 held-out openings that no stage trained on (`data/heldout/prompts.jsonl`) against SFT: win "
        "rates per prompt, ties half (`rlhf_recipes.demo.judges`); distinct-2 and mean words as a multiple of "
        "SFT's; KL to SFT on the held-out samples. `test:` columns are the PPO test split (64 prompts). Goal "
        f"(set before the sweep): both judges >= {GOAL['judge_win']}, distinct-2 and words >= {GOAL['ratio']}x SFT, "
        f"labeler win >= {GOAL['labeler_win']} (held-out). Frontier goal (the default's, chosen later): both judges >= "
        f"{GOAL['judge_win']} with distinct-2 >= {ratio:.3g}x SFT, the gold best-of-16 point of "
        "`benchmarks/best_of_n_ceiling.py` (best-of-n-ceiling.json).", "",
        "Rows without `@labelerfix` ran on the demo as built before the simulated labeler stopped counting \"love\" "
        "in the aspect \"love story\" as sentiment (with its reward model); `@labelerfix` rows on the demo rebuilt "
        "with the fixed labeler (new ranked comparisons, reward model retrained with `recipes/demo/reward.yaml`). "
        "The `before` flags pin the PPO settings the demo shipped with before this study (`entropy_coef` and "
        "`min_response_length` did not exist, i.e. were 0, in the rows recorded before the YAML changed); rows named "
        "`default` are relative to the default of their time (`EARLIER`: entropy bonus 0.02 over 2048 episodes, "
        "shown in their flags); `chosen` is the YAML as it is now. `@sftrm` rows ran on the demo as "
        "`make demo` builds it now: its reward model also learned the simulated labeler's rankings of 1500 x 4 "
        "answers of the SFT model (`recipes/demo/sample_sft.yaml`, `demo.build --add_rankings`), as InstructGPT's "
        "did; `--demo_dir runs/demo --tag @sftrm` after `make demo` reproduces them. PPO runs in fp32 here; `make "
        "demo` runs the same recipe in bf16 on an AMX CPU (`--auto_bf16 true`), so its numbers differ from the "
        "`default@sftrm` row by about a seed's spread; `@bf16` rows ran with `--auto_bf16 true` (and the "
        "rest of the command line) exactly as `make demo` runs PPO.", "",
        markdown_table(rows, columns), "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo_dir", default="runs/demo", help="a built demo with sft/ and reward/ trained")
    parser.add_argument("--work_dir", default="runs/demo/generalisation")
    parser.add_argument("--results", default=str(REPO / "benchmarks/results/ppo-generalisation.json"))
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[42])
    parser.add_argument("--tag", default="", help="appended to the variant names in the results (e.g. which demo)")
    parser.add_argument("--auto_bf16", action="store_true", help="run PPO as `make demo` does (PPO_ARGS: "
                                                                   "--auto_bf16 true); tag such rows, e.g. @bf16")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--retrain", action="store_true", help="retrain variants already trained in --work_dir "
                                                                 "(default: re-evaluate them only)")
    args = parser.parse_args()
    if args.list:
        for name, overrides in VARIANTS.items():
            print(f"{name}: {' '.join(_flags(overrides)) or '(recipes/demo/ppo.yaml as is)'}")
        return
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"Unknown variant(s) {unknown}; see --list.")
    demo, work = Path(args.demo_dir).resolve(), Path(args.work_dir).resolve()
    if not (demo / "data/heldout/prompts.jsonl").is_file() or not (demo / "reward").is_dir():
        raise SystemExit(f"{demo} has no held-out prompts or reward model: run `make demo` first.")
    results = Path(args.results)
    records = json.loads(results.read_text()) if results.is_file() else []
    for seed in args.seeds:
        for name in args.variants:
            record = run_variant(name + args.tag, VARIANTS[name], seed, demo, work, args.retrain, args.auto_bf16)
            records = [r for r in records if (r["variant"], r["seed"]) != (record["variant"], seed)] + [record]
            results.parent.mkdir(parents=True, exist_ok=True)
            results.write_text(json.dumps(records, indent=1) + "\n")
            results.with_suffix(".md").write_text(render(records))
            h = record["heldout"]
            print(f"{name} seed {seed}: vader {h['vader_win']:.3f} afinn {h['afinn_win']:.3f} labeler "
                  f"{h['labeler_win']:.3f} d2 x{h['distinct_2_ratio']:.2f} words x{h['words_ratio']:.2f} "
                  f"KL {h['kl']:.2f} ({record['ppo_wall_s']} s) frontier goal="
                  f"{meets_frontier_goal(h, frontier_goal_ratio())}", flush=True)
    if records:  # `--variants` with no names only re-renders the table
        results.with_suffix(".md").write_text(render(records))


if __name__ == "__main__":
    main()
