"""Our PPO trainer vs TRL 1.12's `trl.experimental.ppo.PPOTrainer` (the last TRL with PPO) on the same models,
prompts and settings (issue 8: target ours >= 1.5x TRL's episodes/s). TRL 1.12 is never a dependency of this
package: it lives in its own virtual environment, `benchmarks/.venv-trl112`, which this script creates.

    python benchmarks/trl_ppo_baseline.py                      # 2 alternating repeats, 3 updates of 8 episodes each
    python benchmarks/trl_ppo_baseline.py --repeats 3 --updates 4 --num_ppo_epochs 4
    python benchmarks/trl_ppo_baseline.py --setup_only         # create the TRL 1.12 environment and stop

Models: the 124M-shape GPT-2 of `fixtures.py` (policy = reference start, and reward = value start, saved with
`save_pretrained` under `runs/bench/124m/`), loaded separately by each side: policy, reference, reward and value.
Settings shared by both (TRL's field names): per_device_train_batch_size, gradient_accumulation_steps=1,
num_mini_batches, num_ppo_epochs, response_length, local_rollout_forward_batch_size, temperature, stop_token=eos,
missing_eos_penalty, kl_coef, kl_estimator=k1, cliprange, cliprange_value, vf_coef, gamma, lam, learning rate,
no gradient checkpointing, fp32. TRL 1.12 never clips gradients, so ours runs with max_grad_norm=0 too; ours has
no ptx term and no adaptive KL here.

Each run is its own process; the sides alternate (ours, TRL, TRL, ours, ...). Reported: median steady-state
episodes/s (first update left out), seconds per update and of generation, peak RSS, and the ratios.
Results: `benchmarks/results/<machine>-trl112-ppo.md`.
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
REPO = HERE.parent
VENV = HERE / ".venv-trl112"
TRL112_REQUIREMENTS = ["torch==2.13.0", "trl==1.12.*", "transformers", "accelerate", "datasets", "peft"]
sys.path.insert(0, str(HERE))


def shared_settings(batch: int, updates: int, response_length: int, epochs: int, mini_batches: int) -> dict:
    return {
        "per_device_train_batch_size": batch // mini_batches, "gradient_accumulation_steps": 1,
        "num_mini_batches": mini_batches, "num_ppo_epochs": epochs, "total_episodes": batch * updates,
        "response_length": response_length, "local_rollout_forward_batch_size": batch, "temperature": 1.0,
        "stop_token": "eos", "missing_eos_penalty": 1.0, "kl_coef": 0.05, "kl_estimator": "k1", "cliprange": 0.2,
        "cliprange_value": 0.2, "vf_coef": 0.1, "gamma": 1.0, "lam": 0.95, "whiten_rewards": False,
        "learning_rate": 3e-6, "lr_scheduler_type": "linear", "bf16": False, "gradient_checkpointing": False,
        "seed": 42, "logging_steps": 1, "save_strategy": "no", "report_to": "none",
    }


# ----------------------------------------------------------------------------------------------------------------
# The TRL 1.12 environment
# ----------------------------------------------------------------------------------------------------------------
def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_venv() -> Path:
    """Create `benchmarks/.venv-trl112` with TRL 1.12 (pip resolves the transformers it accepts) once."""
    python = venv_python()
    check = [str(python), "-c", "import trl, transformers; from trl.experimental.ppo import PPOConfig, PPOTrainer; "
             "print(trl.__version__, transformers.__version__)"]
    if python.is_file() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    print(f"creating {VENV} with {' '.join(TRL112_REQUIREMENTS)} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *TRL112_REQUIREMENTS, "psutil", "pyyaml"], check=True)
    versions = subprocess.run(check, capture_output=True, text=True, check=True).stdout.split()
    print(f"TRL {versions[0]} with transformers {versions[1]} in {VENV}", flush=True)
    return python


# ----------------------------------------------------------------------------------------------------------------
# Workers
# ----------------------------------------------------------------------------------------------------------------
def trl_worker(policy_path: str, reward_path: str, prompts_file: str, settings: dict, result_dir: str) -> None:
    """TRL 1.12's PPOTrainer, as its own `examples/scripts/ppo/ppo.py` sets it up (run inside the TRL 1.12 venv)."""
    import torch
    import trl
    import trl.experimental.ppo.ppo_trainer as ppo_module
    from datasets import load_dataset
    from measure import StepTimer, now, write_result
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    start = now()
    generate_s: list[float] = []
    original = ppo_module.batch_generation

    def timed_generation(*args, **kwargs):
        t0 = now()
        try:
            return original(*args, **kwargs)
        finally:
            generate_s.append(now() - t0)

    ppo_module.batch_generation = timed_generation
    timer = StepTimer()
    tokenizer = AutoTokenizer.from_pretrained(policy_path, padding_side="left")
    dataset = load_dataset("json", data_files=prompts_file, split="train")
    dataset = dataset.map(lambda row: {"input_ids": tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]},
                          remove_columns=dataset.column_names)
    with tempfile.TemporaryDirectory(prefix="trl112-ppo-") as output_dir:
        config = PPOConfig(output_dir=output_dir, num_sample_generations=0, sft_model_path=policy_path,
                           reward_model_path=reward_path, **settings)
        dtype = torch.float32
        policy = AutoModelForCausalLM.from_pretrained(policy_path, dtype=dtype)
        ref = AutoModelForCausalLM.from_pretrained(policy_path, dtype=dtype)
        reward = AutoModelForSequenceClassification.from_pretrained(reward_path, num_labels=1, dtype=dtype)
        value = AutoModelForSequenceClassification.from_pretrained(reward_path, num_labels=1, dtype=dtype)
        trainer = PPOTrainer(args=config, processing_class=tokenizer, model=policy, ref_model=ref,
                             reward_model=reward, value_model=value, train_dataset=dataset,
                             eval_dataset=dataset.select(range(8)), callbacks=[timer])
        trainer.train()
        trainer.save_model(output_dir)
        write_result(result_dir, {"side": f"TRL {trl.__version__}", "step_times": timer.step_times(),
                                  "step_cpu_times": timer.step_cpu_times(),
                                  "generate_s": generate_s, "episodes_per_update": config.batch_size,
                                  "process_s": now() - start})


def ours_argv(policy_path: str, reward_path: str, prompts_dir: str, output_dir: str, settings: dict) -> list[str]:
    argv = ["--model_name_or_path", policy_path, "--sft_model_path", policy_path, "--reward_model_path", reward_path,
            "--dataset_name", prompts_dir, "--output_dir", output_dir, "--dtype", "float32", "--max_grad_norm", "0",
            "--num_sample_generations", "0", "--ptx_coef", "0"]
    for key, value in settings.items():
        argv += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return argv


# ----------------------------------------------------------------------------------------------------------------
# The comparison
# ----------------------------------------------------------------------------------------------------------------
def steady(result: dict) -> dict:
    times = result["step_times"][1:] or result["step_times"]
    generate = result.get("generate_s") or []
    generate = generate[1:] or generate
    out = {"episodes_per_s": result["episodes_per_update"] * len(times) / sum(times),
           "update_s": statistics.mean(times), "peak_rss_mib": result["peak_rss_mib"],
           "process_s": result["process_s"]}
    if generate:
        out["generate_s"] = statistics.mean(generate)
    cpu = result.get("step_cpu_times") or []
    if len(cpu) == len(result["step_times"]):
        cpu = cpu[1:] or cpu
        out["episodes_per_cpu_s"] = result["episodes_per_update"] * len(cpu) / sum(cpu)
    return out


def run_side(side: str, python: Path, paths: dict, settings: dict, threads: int) -> tuple[dict, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1", "WANDB_MODE": "disabled"}
    with tempfile.TemporaryDirectory(prefix=f"ppo-{side}-") as tmp:
        if side == "ours":
            argv = ours_argv(paths["policy"], paths["reward"], paths["prompts_dir"], f"{tmp}/out", settings)
            command = [sys.executable, str(HERE / "worker.py"), "--case", "ppo-vs-trl112", "--stage", "ppo",
                       "--result_dir", tmp, "--", *argv]
            shown = f"python recipes/ppo.py {shlex.join(argv)}".replace(f"{tmp}/out", "OUTPUT_DIR")
        else:
            command = [str(python), __file__, "--worker", "--policy", paths["policy"], "--reward", paths["reward"],
                       "--prompts_file", paths["prompts_file"], "--settings", json.dumps(settings),
                       "--result_dir", tmp]
            shown = shlex.join([str(python.relative_to(REPO)), "benchmarks/trl_ppo_baseline.py", *command[3:]])
            shown = shown.replace(tmp, "TMP")
        proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{side} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
        result = json.loads((Path(tmp) / "rank0.json").read_text())
    if side == "ours":
        result["generate_s"] = result["phases"]["generate_s"]
    return steady(result), shown


def comparison_table(medians: dict[str, dict]) -> str:
    from harness import fmt, markdown_table

    headers = ["trainer", "episodes/s", "episodes per CPU s", "s per update", "generate s per update",
               "peak RSS MiB", "process s"]
    rows = [[side, fmt(m["episodes_per_s"], 3), fmt(m.get("episodes_per_cpu_s"), 3), fmt(m["update_s"], 2),
             fmt(m.get("generate_s"), 2), fmt(m["peak_rss_mib"]), fmt(m["process_s"])] for side, m in medians.items()]
    return markdown_table(headers, rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--updates", type=int, default=3, help="PPO updates per run (the first is warm-up)")
    parser.add_argument("--batch", type=int, default=8, help="episodes per update")
    parser.add_argument("--response_length", type=int, default=16)
    parser.add_argument("--num_ppo_epochs", type=int, default=1)
    parser.add_argument("--num_mini_batches", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--size", default="124m", choices=["tiny", "124m"], help="tiny: a quick smoke test")
    parser.add_argument("--machine")
    parser.add_argument("--cache", default=str(REPO / "runs" / "bench"))
    parser.add_argument("--setup_only", action="store_true")
    parser.add_argument("--no_write", action="store_true")
    parser.add_argument("--output", help="results file (default benchmarks/results/<machine>-trl112-ppo.md)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--policy", help=argparse.SUPPRESS)
    parser.add_argument("--reward", help=argparse.SUPPRESS)
    parser.add_argument("--prompts_file", help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    parser.add_argument("--result_dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        trl_worker(args.policy, args.reward, args.prompts_file, json.loads(args.settings), args.result_dir)
        return 0

    python = ensure_venv()
    if args.setup_only:
        return 0
    from fixtures import prepare_models
    from harness import machine_label
    from measure import environment

    models = prepare_models(Path(args.cache), args.size)
    paths = {"policy": str(models["policy"]), "reward": str(models["reward"]),
             "prompts_dir": str(models["data"] / "prompts_train"),
             "prompts_file": str(models["data"] / "prompts_train" / "train.jsonl")}
    settings = shared_settings(args.batch, args.updates, args.response_length, args.num_ppo_epochs,
                               args.num_mini_batches)
    started = time.perf_counter()
    runs: dict[str, list[dict]] = {"ours": [], "trl112": []}
    commands = {}
    for repeat in range(args.repeats):
        for side in (("ours", "trl112") if repeat % 2 == 0 else ("trl112", "ours")):
            result, commands[side] = run_side(side, python, paths, settings, args.threads)
            runs[side].append(result)
            print(f"{side} #{repeat + 1}: {result['episodes_per_s']:.3f} episodes/s, {result['update_s']:.1f} s/update, "
                  f"RSS {result['peak_rss_mib']:.0f} MiB", flush=True)
    medians = {side: {k: statistics.median(r[k] for r in rs if k in r) for k in rs[0]} for side, rs in runs.items()}
    speed = medians["ours"]["episodes_per_s"] / medians["trl112"]["episodes_per_s"]
    memory = medians["ours"]["peak_rss_mib"] / medians["trl112"]["peak_rss_mib"]
    table = comparison_table({"ours (rlhf_recipes)": medians["ours"], "TRL 1.12 PPOTrainer": medians["trl112"]})
    verdict = "meets" if speed >= 1.5 else "misses"
    summary = (f"Ours / TRL 1.12: {speed:.2f}x episodes/s ({verdict} the >= 1.5x target), "
               f"{memory:.2f}x peak RSS.")
    print("\n" + table + "\n\n" + summary)
    trl_env = subprocess.run([str(python), "-c", "import trl, transformers, torch; print(f'trl {trl.__version__}, "
                              "transformers {transformers.__version__}, torch {torch.__version__}')"],
                             capture_output=True, text=True).stdout.strip()
    machine = args.machine or machine_label()
    text = "\n".join([
        f"# PPO: ours vs TRL 1.12 ({machine})", "",
        f"Measured {datetime.date.today().isoformat()} with `python benchmarks/trl_ppo_baseline.py "
        f"{shlex.join(sys.argv[1:])}` ({(time.perf_counter() - started) / 60:.1f} min), model `{args.size}` (policy, "
        f"reference, reward, value), {args.threads} thread(s) per process, {args.repeats} alternating runs each.", "",
        "Environment (ours): " + ", ".join(f"{k} {v}" for k, v in environment().items()) + ".",
        f"TRL side (`benchmarks/.venv-trl112`): {trl_env}.", "",
        table, "", f"**{summary}**", "",
        "Steady state: the first update of each run is warm-up and left out; medians over runs.", "",
        "Settings (both sides):", "", "```json", json.dumps(settings, indent=2), "```", "",
        "Per-run values:", "", "```json", json.dumps(runs, indent=1), "```", "", "Commands:", "", "```bash",
        *[f"# {k}\n{v}" for k, v in commands.items()], "```", ""])
    if not args.no_write:
        out = Path(args.output) if args.output else HERE / "results" / f"{machine}-trl112-ppo.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
