"""Overhead of our SFT and reward recipes over bare TRL scripts on the same data and model (issue 8, target < 5%).

    python benchmarks/bare_trl.py                       # SFT and reward, demo model, 3 alternating repeats
    python benchmarks/bare_trl.py --stages sft --repeats 5 --size 124m --steps 4

"Ours" is `recipes/sft.py` / `recipes/reward.py` (our data validation, loaders, `RewardTrainer` subclass with
K-wise batching and exact pair metrics, model card) run through `benchmarks/worker.py`. "Bare" is the shortest
script that trains the same model on the same rows with `trl.SFTTrainer` / `trl.RewardTrainer` directly (this
file's `--worker` mode): the same hyperparameters (read from `recipes/demo/*.yaml`), batch, steps and max_length.
The reward data are the same C(4,2) = 6 pairs per demo ranking, in the same order, written as prompt/chosen/rejected.

The two alternate (ours, bare, bare, ours, ...) in separate processes, and the table reports medians of:
steady-state training throughput (real tokens/s, first step left out: the overhead figure), tokens per step (to
show both saw the same batches), whole-process wall time (start-up, data preparation, loading, saving) and peak RSS.
Results: `benchmarks/results/<machine>-wrapper-overhead.md`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import REPO, Case, fmt, machine_label, markdown_table, recipe_args  # noqa: E402

DEFAULT_WORK = {"tiny": {"sft": {"batch": 16, "steps": 40, "max_length": 128},
                         "rm": {"batch": 8, "steps": 40, "max_length": 128}},
                "124m": {"sft": {"batch": 4, "steps": 4, "max_length": 64},
                         "rm": {"batch": 2, "steps": 4, "max_length": 64}}}
YAML = {"sft": REPO / "recipes/demo/sft.yaml", "rm": REPO / "recipes/demo/reward.yaml"}


# ----------------------------------------------------------------------------------------------------------------
# The bare TRL scripts (run with --worker)
# ----------------------------------------------------------------------------------------------------------------
def trl_config(config_class, stage: str, overrides: dict):
    """The TRL config with the recipe YAML's training arguments (the keys the config class knows) + overrides."""
    import dataclasses

    import yaml

    known = {f.name for f in dataclasses.fields(config_class)}
    values = {k: v for k, v in yaml.safe_load(YAML[stage].read_text()).items() if k in known}
    values.update(overrides)
    return config_class(**values)


def bare_worker(stage: str, model_path: str, data_file: str, work: dict, result_dir: str) -> None:
    import torch
    from datasets import load_dataset
    from measure import StepTimer, now, write_result
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    start = now()
    timer = StepTimer()
    samples = work["batch"] * work["steps"]
    if stage == "rm":  # ours reads ceil(samples / 6) rankings of 4 = that many times 6 pairs: take the same pairs
        samples = 6 * -(-samples // 6)
    with tempfile.TemporaryDirectory(prefix="bare-trl-") as output_dir:
        overrides = {"output_dir": output_dir, "per_device_train_batch_size": work["batch"], "max_steps": work["steps"],
                     "max_length": work["max_length"], "save_strategy": "no", "report_to": "none", "eval_strategy": "no"}
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        dataset = load_dataset("json", data_files=data_file, split="train")
        dataset = dataset.select(range(min(len(dataset), samples)))
        if stage == "sft":
            from trl import SFTConfig
            from trl import SFTTrainer as Trainer

            args = trl_config(SFTConfig, stage, overrides)
            model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        else:
            from trl import RewardConfig
            from trl import RewardTrainer as Trainer

            args = trl_config(RewardConfig, stage, overrides)
            model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=1, dtype=torch.float32)
            model.config.pad_token_id = tokenizer.pad_token_id

        class Timed(Trainer):
            def training_step(self, model, inputs, *a, **kw):
                timer.add_batch(inputs)
                return super().training_step(model, inputs, *a, **kw)

        trainer = Timed(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=[timer])
        trainer.train()
        trainer.save_model(output_dir)
    write_result(result_dir, {"step_times": timer.step_times(), "step_cpu_times": timer.step_cpu_times(),
                              "tokens": timer.tokens,
                              "padded_tokens": timer.padded_tokens, "process_s": now() - start})


# ----------------------------------------------------------------------------------------------------------------
# The comparison
# ----------------------------------------------------------------------------------------------------------------
def write_pairs(reward_dir: Path, out_file: Path) -> Path:
    """The demo rankings as the prompt/chosen/rejected pairs our `pairs` batching makes, in the same order."""
    from rlhf_recipes.reward.losses import expand_ranking

    rows = [json.loads(line) for line in (reward_dir / "train.jsonl").read_text().splitlines() if line.strip()]
    with open(out_file, "w") as handle:
        for row in rows:
            for chosen, rejected in expand_ranking(row["responses"]):
                handle.write(json.dumps({"prompt": row["prompt"], "chosen": chosen, "rejected": rejected}) + "\n")
    return out_file


def steady(result: dict) -> dict:
    times, tokens = result["step_times"], result["tokens"]
    seconds, work = sum(times[1:]), sum(tokens[1:])
    out = {"tokens_per_s": work / seconds, "tokens_per_step": statistics.mean(tokens[1:]),
           "process_s": result["process_s"], "peak_rss_mib": result["peak_rss_mib"]}
    if result.get("step_cpu_times"):
        out["tokens_per_cpu_s"] = work / sum(result["step_cpu_times"][1:])
    return out


def run_side(side: str, stage: str, paths: dict, work: dict, data_files: dict, threads: int) -> tuple[dict, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
    with tempfile.TemporaryDirectory(prefix=f"overhead-{side}-{stage}-") as tmp:
        if side == "ours":
            argv = recipe_args(Case(stage, paths["size"]), {k: str(v) for k, v in paths.items()}, f"{tmp}/out",
                               work=work)
            argv += ["--logging_steps", "10"]
            command = [sys.executable, str(HERE / "worker.py"), "--case", f"overhead-{stage}", "--stage", stage,
                       "--result_dir", tmp, "--", *argv]
            shown = f"python recipes/{'sft' if stage == 'sft' else 'reward'}.py {shlex.join(argv)}"
        else:
            command = [sys.executable, __file__, "--worker", stage, "--model", str(paths["policy"]),
                       "--data_file", str(data_files[stage]), "--work", json.dumps(work), "--result_dir", tmp]
            shown = shlex.join(["python", "benchmarks/bare_trl.py", *command[2:]])
        proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{side} {stage} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        result = json.loads((Path(tmp) / "rank0.json").read_text())
    return steady(result), shown.replace(tmp, "TMP")


def summarise(stage: str, runs: dict[str, list[dict]]) -> dict:
    med = {side: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for side, rs in runs.items()}
    cpu = None
    if "tokens_per_cpu_s" in med["ours"] and "tokens_per_cpu_s" in med["bare"]:
        cpu = (med["bare"]["tokens_per_cpu_s"] / med["ours"]["tokens_per_cpu_s"] - 1) * 100
    return {"stage": stage, "ours": med["ours"], "bare": med["bare"], "cpu_overhead_pct": cpu,
            "overhead_pct": (med["bare"]["tokens_per_s"] / med["ours"]["tokens_per_s"] - 1) * 100,
            "process_overhead_pct": (med["ours"]["process_s"] / med["bare"]["process_s"] - 1) * 100,
            "runs": runs}


def overhead_table(summaries: list[dict]) -> str:
    headers = ["stage", "ours tokens/s", "bare TRL tokens/s", "overhead (wall)", "overhead (CPU time)",
               "tokens/step ours / bare", "process s ours / bare", "peak RSS MiB ours / bare", "runs each"]
    rows = []
    for s in summaries:
        o, b = s["ours"], s["bare"]
        cpu = s.get("cpu_overhead_pct")
        rows.append([s["stage"], fmt(o["tokens_per_s"]), fmt(b["tokens_per_s"]), f"{s['overhead_pct']:+.1f}%",
                     f"{cpu:+.1f}%" if cpu is not None else "",
                     f"{fmt(o['tokens_per_step'])} / {fmt(b['tokens_per_step'])}",
                     f"{fmt(o['process_s'])} / {fmt(b['process_s'])}",
                     f"{fmt(o['peak_rss_mib'])} / {fmt(b['peak_rss_mib'])}", str(len(s["runs"]["ours"]))])
    return markdown_table(headers, rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", default="sft,rm")
    parser.add_argument("--size", default="tiny", choices=sorted(DEFAULT_WORK))
    parser.add_argument("--steps", type=int, help="optimizer steps per run (default: 40 tiny, 4 at 124m)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--machine")
    parser.add_argument("--cache", default=str(REPO / "runs" / "bench"))
    parser.add_argument("--no_write", action="store_true")
    # worker mode
    parser.add_argument("--worker", choices=["sft", "rm"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data_file", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--result_dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        bare_worker(args.worker, args.model, args.data_file, json.loads(args.work), args.result_dir)
        return 0

    from fixtures import prepare_models
    from measure import environment

    paths = {**prepare_models(Path(args.cache), args.size), "size": args.size}
    paths.pop("parameters")
    data = Path(paths["data"])
    data_files = {"sft": data / "sft_train" / "train.jsonl",
                  "rm": write_pairs(data / "reward_train", data / "reward_pairs_train.jsonl")}
    summaries, commands = [], {}
    started = time.perf_counter()
    for stage in args.stages.split(","):
        work = dict(DEFAULT_WORK[args.size][stage])
        if args.steps:
            work["steps"] = args.steps
        runs: dict[str, list[dict]] = {"ours": [], "bare": []}
        for repeat in range(args.repeats):
            order = ("ours", "bare") if repeat % 2 == 0 else ("bare", "ours")
            for side in order:
                result, commands[f"{stage} {side}"] = run_side(side, stage, paths, work, data_files, args.threads)
                runs[side].append(result)
                print(f"{stage} {side} #{repeat + 1}: {result['tokens_per_s']:.0f} tokens/s, "
                      f"{result['tokens_per_step']:.0f} tokens/step, process {result['process_s']:.1f} s, "
                      f"RSS {result['peak_rss_mib']:.0f} MiB", flush=True)
        summaries.append(summarise(stage, runs))
    table = overhead_table(summaries)
    print("\n" + table)
    machine = args.machine or machine_label()
    text = "\n".join([
        f"# Wrapper overhead: our recipes vs bare TRL ({machine})", "",
        f"Measured {datetime.date.today().isoformat()} with `python benchmarks/bare_trl.py "
        f"{shlex.join(sys.argv[1:])}` ({(time.perf_counter() - started) / 60:.1f} min), model `{args.size}`, "
        f"{args.threads} thread(s) per process.", "",
        "Environment: " + ", ".join(f"{k} {v}" for k, v in environment().items()) + ".", "",
        "Training overhead = bare tokens/s / ours tokens/s - 1 (medians over alternating runs; steady state, first "
        "step left out). Target: < 5%. *Wall* divides by wall-clock seconds; *CPU time* by the CPU seconds of the "
        "training process (one thread), which other jobs on a shared machine disturb far less. Process time "
        "includes start-up, data validation, loading and saving. Ours runs `ranking_batching: pairs`, the batching "
        "TRL's RewardTrainer has.", "",
        table, "", "Per-run values:", "", "```json",
        json.dumps({s["stage"]: s["runs"] for s in summaries}, indent=1), "```", "", "Commands:", "", "```bash",
        *[f"# {k}\n{v}" for k, v in commands.items()], "```", ""])
    if not args.no_write:
        out = HERE / "results" / f"{machine}-wrapper-overhead.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
