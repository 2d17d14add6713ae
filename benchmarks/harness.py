"""The benchmark's cases, commands, summaries and Markdown report. Pure Python (no torch), so it is unit-tested fast.

A *case* is one stage (sft, rm, ppo; grpo = TRL's GRPOTrainer as a reference) x model size (tiny, 124m) x method
(full, lora, qlora) x launch (1proc, ddp, zero2, zero3) x precision (fp32, bf16). `run.py` runs each case in its own
process (or `accelerate launch` group), which writes one JSON per rank (`measure.write_result`); `summarise` turns
those into a table row, with the FLOPs of each RL phase counted from the shapes the run saw (`phase_flops`) and
divided by the device's measured peak (`measure.peak_flops`) for the MFU.
"""

from __future__ import annotations

import fnmatch
import json
import os
import platform
import shlex
import statistics
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("sft", "rm", "ppo")
RECIPES = {"sft": "sft", "rm": "reward", "ppo": "ppo", "grpo": "ppo"}  # grpo: the worker runs TRL itself
RL_STAGES = ("ppo", "grpo")
LAUNCH_CONFIGS = {
    "1proc": None,
    "ddp": "accelerate_configs/multi_gpu.yaml",
    "zero2": "accelerate_configs/deepspeed_zero2.yaml",
    "zero3": "accelerate_configs/deepspeed_zero3.yaml",
}
METHOD_FLAGS = {
    "full": [],
    "lora": ["--use_peft", "true"],  # ModelConfig defaults: r=16, alpha=32, PEFT's GPT-2 targets (c_attn)
    "qlora": ["--use_peft", "true", "--load_in_4bit", "true"],  # NF4, bitsandbytes
}

# Work per case. CPU settings keep `make bench` under 15 minutes on 2 cores; the GPU profile (gpu_check.sh) is larger.
# sft/rm: global batch (rm: pairs), optimizer steps, max_length. ppo: episodes per update, updates, response length,
# num_ppo_epochs, num_mini_batches. The first step/update is warm-up and is not in the throughput.
PROFILES: dict[str, dict[str, dict[str, dict[str, int]]]] = {
    "cpu": {
        "tiny": {"sft": {"batch": 16, "steps": 16, "max_length": 128},
                 "rm": {"batch": 8, "steps": 16, "max_length": 128},
                 "ppo": {"batch": 32, "steps": 4, "response_length": 16, "epochs": 1, "mini_batches": 1}},
        "124m": {"sft": {"batch": 4, "steps": 3, "max_length": 64},
                 "rm": {"batch": 2, "steps": 3, "max_length": 64},
                 "ppo": {"batch": 8, "steps": 3, "response_length": 32, "epochs": 1, "mini_batches": 1},
                 "grpo": {"batch": 8, "steps": 2, "response_length": 32, "epochs": 1, "mini_batches": 1}},
    },
    "gpu": {
        "tiny": {"sft": {"batch": 64, "steps": 10, "max_length": 128},
                 "rm": {"batch": 32, "steps": 10, "max_length": 128},
                 "ppo": {"batch": 64, "steps": 4, "response_length": 24, "epochs": 4, "mini_batches": 2}},
        "124m": {"sft": {"batch": 32, "steps": 10, "max_length": 256},
                 "rm": {"batch": 16, "steps": 10, "max_length": 256},
                 "ppo": {"batch": 64, "steps": 3, "response_length": 53, "epochs": 4, "mini_batches": 2},
                 "grpo": {"batch": 64, "steps": 3, "response_length": 53, "epochs": 1, "mini_batches": 1}},
    },
}


@dataclass(frozen=True)
class Case:
    stage: str
    size: str
    method: str = "full"
    launch: str = "1proc"
    tier: str = "default"  # quick < default < full: which selections include it
    est_s: int = 30  # rough duration on the 2-core CPU, for the time budget
    precision: str = "fp32"  # bf16: autocast (`--bf16 true`); `run.py --bf16` turns every case to bf16
    work: tuple = ()  # ((key, value), ...) overriding the profile's work: the points of `run.py --sweep`

    @property
    def name(self) -> str:
        suffix = "-bf16" if self.precision == "bf16" else ""
        swept = "".join(f"@{key}={value}" for key, value in self.work)
        return f"{self.stage}-{self.size}-{self.method}-{self.launch}{suffix}{swept}"

    @property
    def distributed(self) -> bool:
        return self.launch != "1proc"


def sweep_cases(cases: list[Case], sweeps: list[str]) -> list[Case]:
    """`key=v1,v2,...` for each sweep: every case at each value of one key at a time (the rest from the profile).
    A key that is not a work size (batch, response_length, ...) is passed to the recipe as `--key value`."""
    out = []
    for sweep in sweeps:
        key, _, values = sweep.partition("=")
        if not values:
            raise ValueError(f"--sweep {sweep!r}: write key=v1,v2 (e.g. response_length=16,64).")
        out += [replace(case, work=((key, int(v) if v.isdigit() else v),)) for v in values.split(",")
                for case in cases]
    return out


def _cases() -> list[Case]:
    """Every case, in the order they run: what issue 8 asks for first, so that a tight time budget skips extras."""
    t = "tiny"
    cases = [  # PPO at 124M in fp32 and bf16, full and LoRA; TRL's GRPO at the same shapes; then SFT and reward
        Case("ppo", "124m", "full", est_s=110),
        Case("ppo", "124m", "full", precision="bf16", est_s=80),
        Case("ppo", "124m", "lora", est_s=90),
        Case("ppo", "124m", "lora", precision="bf16", est_s=70),
        Case("grpo", "124m", "full", est_s=90),
        Case("grpo", "124m", "full", precision="bf16", est_s=70),
        Case("sft", "124m", "full", est_s=60),
        Case("rm", "124m", "full", est_s=60),
    ]
    for stage in STAGES:  # every stage x method in one process on the demo model: the quick smoke test
        for method in METHOD_FLAGS:
            cases.append(Case(stage, t, method, tier="quick", est_s=35))
    cases += [Case("sft", t, "full", "zero2", tier="quick", est_s=60), Case("ppo", t, "full", "zero2", tier="quick",
                                                                           est_s=60)]
    cases += [Case(stage, t, "full", launch, est_s=60) for launch in ("ddp", "zero3") for stage in ("sft", "ppo")]
    cases += [
        Case("sft", "124m", "lora", est_s=50),
        Case("sft", "124m", "qlora", est_s=60),
        Case("rm", "124m", "lora", est_s=50),
        Case("sft", "124m", "full", "zero2", est_s=90),
        # --full only
        Case("rm", t, "full", "zero2", tier="full", est_s=60),
        Case("rm", t, "full", "zero3", tier="full", est_s=60),
        Case("ppo", t, "lora", "zero2", tier="full", est_s=60),
        Case("rm", "124m", "qlora", tier="full", est_s=60),
        Case("ppo", "124m", "qlora", tier="full", est_s=200),
        Case("sft", "124m", "full", "zero3", tier="full", est_s=100),
        Case("rm", "124m", "full", "zero2", tier="full", est_s=90),
        Case("ppo", "124m", "full", "zero2", tier="full", est_s=300),
        Case("ppo", "124m", "lora", "zero2", tier="full", est_s=200),
    ]
    return cases


CASES = _cases()
TIERS = {"quick": ("quick",), "default": ("quick", "default"), "full": ("quick", "default", "full")}


def select_cases(tier: str = "default", patterns: list[str] | None = None) -> list[Case]:
    """Cases of a tier, or those whose name matches any glob in `patterns` (e.g. `ppo-124m-*`)."""
    if patterns:
        chosen = [c for c in CASES if any(fnmatch.fnmatch(c.name, p) for p in patterns)]
        if not chosen:
            raise ValueError(f"No case matches {patterns}; `--list` shows them.")
        return chosen
    return [c for c in CASES if c.tier in TIERS[tier]]


# ----------------------------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------------------------
def recipe_args(case: Case, paths: dict[str, str], output_dir: str, profile: str = "cpu", world_size: int = 1,
                bf16: bool = False, work: dict[str, int] | None = None, cpu: bool = True) -> list[str]:
    """The recipe's command-line arguments for this case (what a user would type after `recipes/<stage>.py`).

    `work` overrides the profile's batch/steps/lengths for this case.
    """
    work = {**PROFILES[profile][case.size][case.stage], **dict(case.work), **(work or {})}
    local = max(1, work["batch"] // world_size)  # this process's share of the global batch
    recipe = RECIPES[case.stage]
    stage_data = {"sft": "sft_train", "rm": "reward_train", "ppo": "prompts_train", "grpo": "prompts_train"}[case.stage]
    args = ["--config", f"recipes/demo/{recipe}.yaml", "--model_name_or_path", paths["policy"],
            "--dataset_name", f"{paths['data']}/{stage_data}", "--output_dir", output_dir, "--save_strategy", "no",
            "--logging_steps", "1", "--report_to", "none", "--bf16", str(bf16).lower()]
    if case.stage == "grpo":  # the worker's own TRL GRPOTrainer run: its flags, not a recipe's
        return ["--policy", paths["policy"], "--reward", paths["reward"],
                "--prompts_file", f"{paths['data']}/prompts_train/train.jsonl", "--output_dir", output_dir,
                "--batch", str(max(1, work["batch"] // world_size)), "--steps", str(work["steps"]),
                "--response_length", str(work["response_length"]), "--bf16", str(bf16).lower(),
                "--use_cpu", str(cpu).lower()] + (["--use_peft", "true"] if case.method != "full" else [])
    if case.stage == "ppo":
        # learning_rate 0: the same work per update, and PPO's invariants (KL 0, ratio 1) checkable in every run
        args += ["--learning_rate", "0"]
        # TRL's arithmetic: per_device_train_batch_size * num_mini_batches episodes per process and update
        args += ["--sft_model_path", paths["policy"], "--reward_model_path", paths["reward"],
                 "--per_device_train_batch_size", str(max(1, local // work["mini_batches"])),
                 "--gradient_accumulation_steps", "1", "--local_rollout_forward_batch_size", str(local),
                 "--response_length", str(work["response_length"]), "--num_ppo_epochs", str(work["epochs"]),
                 "--num_mini_batches", str(work["mini_batches"]), "--total_episodes", str(work["batch"] * work["steps"]),
                 "--ptx_coef", "0", "--logging_steps", "1"]
        # a swept key that is not a work size is a PPOConfig field, e.g. generation_backend=static
        args += [x for key, value in case.work if key not in PROFILES[profile][case.size][case.stage]
                 for x in (f"--{key}", str(value))]
    else:
        args += ["--per_device_train_batch_size", str(local), "--max_steps", str(work["steps"]),
                 "--max_length", str(work["max_length"]),
                 # rm: every demo ranking of K=4 expands into 6 pairs
                 "--max_train_samples", str(-(-work["batch"] * work["steps"] // (6 if case.stage == "rm" else 1)))]
        if case.stage == "rm":  # pairs: `batch` counts pairs (2 sequences each), as in TRL's RewardTrainer
            args += ["--ranking_batching", "pairs", "--normalization_samples", "0"]
    if case.distributed and cpu:
        args += ["--ddp_backend", "gloo"]  # CPU: DeepSpeed and DDP need gloo
    return args + METHOD_FLAGS[case.method]


def _dedupe_flags(args: list[str]) -> list[str]:
    """Keep the last value of a repeated `--flag value` (what the parser would use), to print clean commands."""
    seen: dict[str, int] = {}
    pairs = [(args[i], args[i + 1]) for i in range(0, len(args), 2)]
    for i, (flag, _) in enumerate(pairs):
        seen[flag] = i
    return [x for i, (flag, value) in enumerate(pairs) if seen[flag] == i for x in (flag, value)]


def launch_prefix(case: Case, python: str, num_processes: int, mixed_precision: str = "no") -> list[str]:
    """`python` for one process; `accelerate launch ...` with the repo's config for the distributed launches."""
    if not case.distributed:
        return [python]
    config = LAUNCH_CONFIGS[case.launch]
    return [python, "-m", "accelerate.commands.launch", "--config_file", config, "--num_processes",
            str(num_processes), "--mixed_precision", mixed_precision]


def user_command(case: Case, recipe_argv: list[str], num_processes: int, mixed_precision: str = "no") -> str:
    """The equivalent command a user runs (recipe instead of the measuring worker)."""
    if case.stage == "grpo":
        return f"python benchmarks/worker.py --case {case.name} --stage grpo --result_dir DIR -- " + shlex.join(
            recipe_argv)
    recipe = f"recipes/{RECIPES[case.stage]}.py"
    if case.distributed:
        prefix = (f"accelerate launch --config_file {LAUNCH_CONFIGS[case.launch]} --num_processes {num_processes} "
                  f"--mixed_precision {mixed_precision} {recipe}")
    else:
        prefix = f"python {recipe}"
    return f"{prefix} {shlex.join(_dedupe_flags(recipe_argv))}"


# ----------------------------------------------------------------------------------------------------------------
# Summaries
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Row:
    case: str
    stage: str
    size: str
    method: str
    launch: str
    procs: int
    status: str = "ok"
    params_m: float | None = None
    trainable_m: float | None = None
    throughput: float | None = None
    unit: str = ""
    measured_steps: int | None = None
    peak_rss_mib: float | None = None  # the largest process
    total_rss_mib: float | None = None  # all processes of the case
    peak_gpu_mib: float | None = None
    generate_s: float | None = None  # PPO, per update (after warm-up), slowest rank
    score_s: float | None = None
    optimise_s: float | None = None
    update_s: float | None = None
    precision: str = "fp32"
    # RL cases, per phase: real tokens processed per second and model FLOPs utilisation (counted FLOPs / s / peak)
    phase_tokens_per_s: dict = field(default_factory=dict)
    phase_mfu: dict = field(default_factory=dict)
    kl_max: float | None = None  # PPO at learning_rate 0: max |objective/kl| and |val/ratio - 1| over updates
    ratio_dev_max: float | None = None
    wall_s: float | None = None  # the whole process: start-up, loading, training, saving
    command: str = ""
    note: str = ""
    extra: dict = field(default_factory=dict)


def _after_warmup(values: list[float], warmup: int = 1) -> list[float]:
    return values[warmup:] if len(values) > warmup else values


def forward_flops(layers: int, width: int, vocab: int, batch: int, seq: int, logit_positions: int) -> float:
    """Matmul FLOPs of a GPT-2 forward over `batch` sequences of `seq` tokens, the LM head on `logit_positions` of
    each: per token 2 x 12 L d^2 (attention and MLP weights) + 4 L d seq (scores and weighted values, counted over
    the whole sequence as in PaLM's MFU), plus 2 d V per position with logits."""
    per_token = 24 * layers * width**2 + 4 * layers * width * seq
    return batch * (seq * per_token + logit_positions * 2 * width * vocab)


def generate_flops(layers: int, width: int, vocab: int, batch: int, prompt: int, steps: int) -> float:
    """Prefill of the prompt (logits at its last position) + `steps - 1` one-token decode steps over a growing
    KV cache (context prompt + t), each with logits."""
    flops = forward_flops(layers, width, vocab, batch, prompt, 1)
    for t in range(1, steps):
        flops += batch * (24 * layers * width**2 + 4 * layers * width * (prompt + t) + 2 * width * vocab)
    return flops


def phase_flops(stage: str, model: dict, shape: dict, method: str, precision: str, epochs: int) -> dict[str, float]:
    """Counted FLOPs of one update's phases, from what it ran on: `shape` = batch, prompt (padded width), response
    (width after trimming). PPO scores with the reference (logits), the value and the reward model (no logits), plus
    in bf16 the policy (the rollout's log-probs); its epochs train the policy (logits) and the value model. Training
    is 3 forwards (forward + backward) at full fine-tuning, 2 with LoRA (no weight gradients for the frozen base).
    TRL's GRPO scores with the reference and the reward model and trains the policy only."""
    dims = (model["layers"], model["width"], model["vocab"])
    b, p, w = shape["batch"], shape["prompt"], shape["response"]
    seq = p + w
    with_logits = forward_flops(*dims, b, seq, w + 1)
    without = forward_flops(*dims, b, seq, 0)
    train = 2 if method != "full" else 3
    if stage == "grpo":
        return {"generate": generate_flops(*dims, b, p, w), "score": with_logits + without,
                "optimise": epochs * train * with_logits}
    score = with_logits + 2 * without + (with_logits if precision == "bf16" else 0)
    return {"generate": generate_flops(*dims, b, p, w), "score": score,
            "optimise": epochs * train * (with_logits + without)}


def _rl_phase_figures(row: Row, case: Case, rank: dict, n: int, peaks: dict | None) -> None:
    shapes = _after_warmup(rank.get("shapes", [])[:n])
    model = rank.get("model")
    if not shapes or not model:
        return
    epochs = rank.get("epochs", 1)
    counts = {"generate": [s["response_tokens"] for s in shapes],
              "score": [s["batch"] * (s["prompt"] + s["response"]) for s in shapes],
              "optimise": [epochs * s["batch"] * (s["prompt"] + s["response"]) for s in shapes]}
    flops = [phase_flops(case.stage, model, s, case.method, row.precision, epochs) for s in shapes]
    peak = (peaks or {}).get(row.precision)
    for phase in ("generate", "score", "optimise"):
        seconds = sum(_after_warmup(rank["phases"][f"{phase}_s"][:n]))
        if seconds <= 0:
            continue
        row.phase_tokens_per_s[phase] = sum(counts[phase]) / seconds
        if peak:
            row.phase_mfu[phase] = sum(f[phase] for f in flops) / seconds / peak


def summarise(case: Case, ranks: list[dict], wall_s: float | None = None, command: str = "",
              peaks: dict | None = None, precision: str | None = None) -> Row:
    """One table row from the per-rank results of a case. `peaks`: the device's peak FLOP/s per precision."""
    row = Row(case=case.name, stage=case.stage, size=case.size, method=case.method, launch=case.launch,
              procs=len(ranks), wall_s=wall_s, command=command, precision=precision or case.precision)
    if not ranks:
        row.status = "failed"
        return row
    first = ranks[0]
    if first.get("mixed_precision") in ("bf16", "fp16", "no"):
        row.precision = {"no": "fp32"}.get(first["mixed_precision"], first["mixed_precision"])
    row.params_m = first.get("params", 0) / 1e6 if first.get("params") else None
    row.trainable_m = first.get("trainable", 0) / 1e6 if first.get("trainable") is not None else None
    rss = [r["peak_rss_mib"] for r in ranks]
    row.peak_rss_mib, row.total_rss_mib = max(rss), sum(rss)
    gpu = [r["peak_gpu_mib"] for r in ranks if "peak_gpu_mib" in r]
    row.peak_gpu_mib = max(gpu) if gpu else None
    times = [r["step_times"] for r in ranks]
    n = min(len(t) for t in times)
    measured = [_after_warmup(t[:n]) for t in times]
    seconds = [sum(t) for t in measured]
    slowest = max(range(len(ranks)), key=seconds.__getitem__)  # the processes wait for each other: report it
    row.measured_steps = len(measured[slowest])
    if case.stage in RL_STAGES:
        episodes = first["episodes_per_update"] * row.measured_steps  # global episodes
        row.throughput, row.unit = episodes / seconds[slowest], "episodes/s"
        row.update_s = seconds[slowest] / row.measured_steps
        cpu = ranks[slowest].get("step_cpu_times")
        if cpu:  # CPU seconds of the process: what other jobs' time slices on a shared machine do not inflate
            row.extra["episodes_per_cpu_s"] = episodes / sum(_after_warmup(cpu[:n]))
        phases = ranks[slowest]["phases"]
        if "optimise_s" not in phases and "generate_s" in phases:  # GRPO: what is not rollout is the optimiser's
            phases["optimise_s"] = [t - g - s for t, g, s in zip(times[slowest], phases["generate_s"],
                                                                  phases["score_s"])]
        for key in ("generate_s", "score_s", "optimise_s"):
            setattr(row, key, statistics.mean(_after_warmup(phases[key][:n])))
        _rl_phase_figures(row, case, ranks[slowest], n, peaks)
        invariants = [e for e in first.get("invariants", []) if e.get("kl") is not None]
        if invariants:
            row.kl_max = max(abs(e["kl"]) for e in invariants)
            row.ratio_dev_max = max(abs(e["ratio"] - 1) for e in invariants)
    else:
        tokens = sum(sum(_after_warmup(r["tokens"][:n])) for r in ranks)
        row.throughput, row.unit = tokens / seconds[slowest], "tokens/s"
        padded = sum(sum(_after_warmup(r["padded_tokens"][:n])) for r in ranks)
        row.extra["padded_tokens_per_s"] = padded / seconds[slowest]
    return row


# ----------------------------------------------------------------------------------------------------------------
# Tables and the results file
# ----------------------------------------------------------------------------------------------------------------
def fmt(value, digits: int = 1) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if value != value:  # NaN
            return "nan"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


MAIN_HEADERS = ["case", "stage", "model", "method", "launch", "procs", "trainable M", "throughput", "unit",
                "peak RSS/proc MiB", "RSS all procs MiB", "peak GPU MiB", "wall s", "status"]
PPO_HEADERS = ["case", "episodes/s", "episodes/CPU-s", "update s", "generate s", "score s", "optimise s", "other s"]
PHASE_HEADERS = ["case", "generate tok/s", "generate MFU", "score tok/s", "score MFU", "optimise tok/s",
                 "optimise MFU", "max abs KL (lr 0)", "max abs(ratio - 1) (lr 0)"]


def main_table(rows: list[Row]) -> str:
    body = [[r.case, r.stage, r.size, r.method, r.launch, str(r.procs), fmt(r.trainable_m, 2),
             fmt(r.throughput, 2 if r.throughput is not None and r.throughput < 10 else 1),
             r.unit, fmt(r.peak_rss_mib), fmt(r.total_rss_mib), fmt(r.peak_gpu_mib), fmt(r.wall_s),
             r.status + (f" ({r.note})" if r.note else "")] for r in rows]
    return markdown_table(MAIN_HEADERS, body)


def ppo_table(rows: list[Row]) -> str:
    body = []
    for r in rows:
        if r.stage not in RL_STAGES or r.status != "ok":
            continue
        other = None
        if None not in (r.update_s, r.generate_s, r.score_s, r.optimise_s):
            other = r.update_s - r.generate_s - r.score_s - r.optimise_s
        body.append([r.case, fmt(r.throughput, 2), fmt(r.extra.get("episodes_per_cpu_s"), 2), fmt(r.update_s, 2),
                     fmt(r.generate_s, 2), fmt(r.score_s, 2),
                     fmt(r.optimise_s, 2), fmt(other, 2)])
    return markdown_table(PPO_HEADERS, body) if body else ""


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def phase_table(rows: list[Row]) -> str:
    """Per RL phase: tokens/s (generate: sampled response tokens; score and optimise: prompt + response tokens
    through the forwards, per epoch for optimise) and MFU; and PPO's invariants at learning rate 0."""
    body = []
    for r in rows:
        if r.stage not in RL_STAGES or r.status != "ok" or not r.phase_tokens_per_s:
            continue
        tok, mfu = r.phase_tokens_per_s, r.phase_mfu
        body.append([r.case, fmt(tok.get("generate")), _pct(mfu.get("generate")), fmt(tok.get("score")),
                     _pct(mfu.get("score")), fmt(tok.get("optimise")), _pct(mfu.get("optimise")),
                     "" if r.kl_max is None else f"{r.kl_max:.1e}",
                     "" if r.ratio_dev_max is None else f"{r.ratio_dev_max:.1e}"])
    return markdown_table(PHASE_HEADERS, body) if body else ""


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def findings(rows: list[Row]) -> list[str]:
    """The derived figures issue 8 asks for (LoRA vs full PPO memory), when both rows were measured."""
    by_case = {r.case: r for r in rows if r.status == "ok"}
    lines = []
    for size in ("124m",):  # at the demo size the ~600 MiB of the process itself hides the weights
        full, lora = by_case.get(f"ppo-{size}-full-1proc"), by_case.get(f"ppo-{size}-lora-1proc")
        # On a GPU the models live in GPU memory: compare torch's peak allocation there, not the host RSS.
        on_gpu = bool(full and lora and full.peak_gpu_mib and lora.peak_gpu_mib)
        label, key = ("peak GPU memory", "peak_gpu_mib") if on_gpu else ("peak RSS", "peak_rss_mib")
        if full and lora:
            value = ratio(getattr(lora, key), getattr(full, key))
            verdict = "meets" if value is not None and value <= 0.6 else "misses"
            lines.append(f"PPO {label}, LoRA / full ({size}): {fmt(getattr(lora, key))} / {fmt(getattr(full, key))}"
                         f" MiB = {value:.2f} ({verdict} the <= 0.6 target)")
        for method in ("full", "lora"):
            fp32, bf16 = by_case.get(f"ppo-{size}-{method}-1proc"), by_case.get(f"ppo-{size}-{method}-1proc-bf16")
            if fp32 and bf16 and fp32.throughput:
                speedup = bf16.throughput / fp32.throughput
                verdict = "meets" if speedup >= 1.5 else "misses"
                lines.append(f"PPO {method} ({size}) bf16 / fp32 episodes/s: {fmt(bf16.throughput, 2)} / "
                             f"{fmt(fp32.throughput, 2)} = {speedup:.2f}x ({verdict} the >= 1.5x target)")
                cpu_fp32, cpu_bf16 = fp32.extra.get("episodes_per_cpu_s"), bf16.extra.get("episodes_per_cpu_s")
                if cpu_fp32 and cpu_bf16:
                    lines.append(f"PPO {method} ({size}) bf16 / fp32 episodes per CPU-second: {cpu_bf16:.2f} / "
                                 f"{cpu_fp32:.2f} = {cpu_bf16 / cpu_fp32:.2f}x")
        ours, grpo = by_case.get(f"ppo-{size}-full-1proc-bf16"), by_case.get(f"grpo-{size}-full-1proc-bf16")
        if ours and grpo and grpo.throughput:
            lines.append(f"bf16 episodes/s, our PPO / TRL's GRPOTrainer ({size}, full): {fmt(ours.throughput, 2)} / "
                         f"{fmt(grpo.throughput, 2)} = {ours.throughput / grpo.throughput:.2f}x (GRPO trains one "
                         "network and scores with two; PPO trains two and scores with three or four)")
        qlora = by_case.get(f"ppo-{size}-qlora-1proc")
        if full and qlora:
            lines.append(f"PPO {label}, QLoRA / full ({size}): {fmt(ratio(getattr(qlora, key), getattr(full, key)), 2)}")
    return lines


def machine_label(cpu_count: int | None = None, system: str | None = None, arch: str | None = None,
                  gpu: str | None = None) -> str:
    """A hostname-independent label: `cpu-2core`, `cpu-8core-darwin-arm64`, `gpu-nvidia-h100-80gb-hbm3-x1`."""
    if gpu:
        return "gpu-" + "".join(c if c.isalnum() else "-" for c in gpu.lower()).strip("-").replace("--", "-")
    cpu_count = cpu_count or os.cpu_count() or 1
    system = (system or platform.system()).lower()
    arch = (arch or platform.machine()).lower()
    label = f"cpu-{cpu_count}core"
    if (system, arch) not in (("linux", "x86_64"), ("linux", "amd64")):
        label += f"-{system}-{arch}"
    return label


def report(rows: list[Row], *, machine: str, environment: dict[str, str], invocation: str, settings: dict,
           notes: list[str] | None = None, date: str = "") -> str:
    """The Markdown results file: environment, the tables, derived figures, and the exact commands."""
    out = [f"# Benchmark results: {machine}", ""]
    if date:
        out.append(f"Measured {date} with `{invocation}`.")
    else:
        out.append(f"Measured with `{invocation}`.")
    out += ["", "Environment: " + ", ".join(f"{k} {v}" for k, v in environment.items()) + ".", ""]
    out += ["Throughput is steady state: the first optimizer step (PPO: the first update) is warm-up and is left "
            "out. `tokens/s` counts real (non-pad) tokens trained on per second, all processes together. PPO "
            "`episodes/s` = episodes per update / seconds per update; its split (per update, slowest process): "
            "`generate` = sampling the responses with the KV cache, `score` = the no-grad forwards (policy and "
            "reference log-probs, values, reward), `optimise` = the PPO epochs, `other` = GAE, statistics, "
            "logging. Peak RSS is `ru_maxrss` of each process (loading and saving included); `wall s` is the whole "
            "process, start-up included.", ""]
    out += ["## Stages", "", main_table(rows), ""]
    ppo = ppo_table(rows)
    if ppo:
        out += ["## PPO time split (seconds per update)", "", ppo, ""]
    phases = phase_table(rows)
    if phases:
        out += ["## RL phases: tokens/s and MFU", "", "MFU = FLOPs counted from the shapes each update ran "
                "(`harness.phase_flops`) / phase seconds / the peak FLOP/s of the device in the case's precision "
                "(Settings: `peak_flops`, measured by `measure.peak_flops`).", "", phases, ""]
    derived = findings(rows)
    if derived:
        out += ["## Derived", ""] + [f"* {line}" for line in derived] + [""]
    if notes:
        out += ["## Notes", ""] + [f"* {n}" for n in notes] + [""]
    out += ["## Settings", "", "```json", json.dumps(settings, indent=2, sort_keys=True), "```", ""]
    out += ["## Commands", "", "Each case, as the equivalent recipe command (the harness runs the same arguments "
            "through `benchmarks/worker.py`, which adds the timers):", "", "```bash"]
    out += [f"# {r.case}\n{r.command}" for r in rows if r.command]
    out += ["```", ""]
    return "\n".join(out)


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def median_row(rows: list[Row]) -> Row:
    """The run of median throughput among a case's successful repeats (the lower middle one for an even count),
    noting every repeat's figure; the first row when none succeeded."""
    ok = sorted((r for r in rows if r.status == "ok" and r.throughput is not None), key=lambda r: r.throughput)
    if not ok:
        return rows[0]
    chosen = ok[(len(ok) - 1) // 2]
    if len(ok) > 1:
        runs = ", ".join(fmt(r.throughput, 2) for r in rows if r.status == "ok")
        chosen.note = f"median of {len(ok)} alternating runs: {runs} {chosen.unit}"
    return chosen


def row_to_json(row: Row) -> dict:
    return asdict(row)


def merge_rows(previous: list[dict], new: list[Row]) -> list[Row]:
    """Rows of an earlier results file updated with the cases measured now (a skipped case keeps its old row)."""
    known = set(Row.__dataclass_fields__)
    rows = {r["case"]: Row(**{k: v for k, v in r.items() if k in known}) for r in previous}
    for row in new:
        if row.status != "skipped" or row.case not in rows:
            rows[row.case] = row
    order = {c.name: i for i, c in enumerate(CASES)}
    return sorted(rows.values(), key=lambda r: order.get(r.case, len(order)))
