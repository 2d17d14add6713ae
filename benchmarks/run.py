"""Throughput and peak memory of every stage (SFT, reward model, PPO) under full fine-tuning, LoRA and QLoRA, in
one process and two (DDP, DeepSpeed ZeRO-2/3), on the demo model and a 124M-parameter GPT-2.

    make bench                                  # the default set, < 15 minutes on a 2-core CPU
    make bench ARGS="--quick"                   # the demo model only (every stage and method, plus ZeRO-2)
    make bench ARGS="--full"                    # also QLoRA PPO, ZeRO-3 and LoRA+ZeRO-2 at 124M (longer)
    python benchmarks/run.py --cases 'ppo-124m-*' --machine my-laptop
    python benchmarks/run.py --list

Each case runs in its own process (`benchmarks/worker.py`, under `accelerate launch` for two processes), so peak
RSS is per case. The table is printed and written to `benchmarks/results/<machine>.md` with the exact commands;
`--machine` names the file (default: a label such as `cpu-2core` from the CPU count and platform, or the GPU).
The models are built once into `runs/bench/` (`benchmarks/fixtures.py`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import (  # noqa: E402
    PROFILES,
    REPO,
    Case,
    Row,
    launch_prefix,
    machine_label,
    main_table,
    median_row,
    merge_rows,
    phase_table,
    ppo_table,
    recipe_args,
    report,
    row_to_json,
    select_cases,
    summarise,
    sweep_cases,
    user_command,
)


def case_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "WANDB_MODE": "disabled", "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))})
    return env


def run_case(case: Case, paths: dict, *, profile: str, world_size: int, bf16: bool, threads: int, timeout: float,
             log_dir: Path, cpu: bool = True, peaks: dict | None = None) -> Row:
    bf16 = bf16 or case.precision == "bf16"
    nprocs = world_size if case.distributed else 1
    with tempfile.TemporaryDirectory(prefix=f"bench-{case.name}-") as tmp:
        result_dir, output_dir = Path(tmp) / "results", Path(tmp) / "out"
        argv = recipe_args(case, {k: str(v) for k, v in paths.items()}, str(output_dir), profile=profile,
                           world_size=nprocs, bf16=bf16, cpu=cpu)
        mixed = "bf16" if bf16 else "no"
        command = launch_prefix(case, sys.executable, nprocs, mixed) + [
            str(HERE / "worker.py"), "--case", case.name, "--stage", case.stage, "--result_dir", str(result_dir),
            "--", *argv]
        shown = user_command(case, argv, nprocs, mixed).replace(str(output_dir), "OUTPUT_DIR")
        start = time.perf_counter()
        log = log_dir / f"{case.name}.log"
        status, note = "ok", ""
        try:
            with open(log, "w") as handle:
                proc = subprocess.run(command, cwd=REPO, env=case_env(threads), stdout=handle,
                                      stderr=subprocess.STDOUT, timeout=timeout)
            if proc.returncode != 0:
                status, note = "failed", f"exit {proc.returncode}, see {log}"
        except subprocess.TimeoutExpired:
            status, note = "timeout", f"after {timeout:.0f} s"
        wall = time.perf_counter() - start
        ranks = [json.loads(p.read_text()) for p in sorted(result_dir.glob("rank*.json"))]
    if status != "ok" or len(ranks) != nprocs:
        row = Row(case=case.name, stage=case.stage, size=case.size, method=case.method, launch=case.launch,
                  procs=nprocs, status=status if status != "ok" else "failed", wall_s=wall, command=shown,
                  note=note or f"{len(ranks)} of {nprocs} processes reported")
        tail = log.read_text(errors="replace").splitlines()[-15:] if log.is_file() else []
        print(f"  {case.name}: {row.status} {row.note}\n    " + "\n    ".join(tail), flush=True)
        return row
    return summarise(case, ranks, wall_s=wall, command=shown, peaks=peaks, precision="bf16" if bf16 else "fp32")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="demo-model cases only (a few minutes)")
    group.add_argument("--full", action="store_true", help="every case, including the long 124M ones")
    group.add_argument("--cases", help="comma-separated case names or globs, e.g. 'ppo-124m-*,sft-tiny-full-zero2'")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--machine", help="results file name (default: derived from the CPU/GPU)")
    parser.add_argument("--profile", choices=sorted(PROFILES), help="work per case (default: gpu with CUDA)")
    parser.add_argument("--bf16", action="store_true", help="every case in bf16 mixed precision (the GPU check)")
    parser.add_argument("--num_processes", type=int, default=2, help="processes of the distributed cases")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")),
                        help="OMP_NUM_THREADS of every process (default 1: the 2-core CPU is shared)")
    parser.add_argument("--sweep", action="append", default=[],
                        help="run the cases at each value of one work key, e.g. 'response_length=16,64' or "
                             "'batch=4,16' (repeatable; rows are named case@key=value)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run the selected cases this many times, alternating, and keep each case's median run")
    parser.add_argument("--budget_min", type=float, default=14.0,
                        help="skip the remaining cases once their estimates would pass this many minutes")
    parser.add_argument("--cache", default=str(REPO / "runs" / "bench"), help="where models and data are built")
    parser.add_argument("--output", help="results file (default benchmarks/results/<machine>.md)")
    parser.add_argument("--no_write", action="store_true", help="print only")
    parser.add_argument("--note", action="append", default=[], help="a line for the report's notes (repeatable)")
    parser.add_argument("--merge", action="store_true",
                        help="update the existing results file: replace the rows of the cases run now, keep the rest")
    args = parser.parse_args(argv)

    tier = "quick" if args.quick else "full" if args.full else "default"
    cases = select_cases(tier, args.cases.split(",") if args.cases else None)
    if args.sweep:
        cases = sweep_cases(cases, args.sweep)
    if args.list:
        for case in select_cases("full"):
            print(f"{case.name:32s} tier={case.tier:8s} ~{case.est_s}s")
        return 0

    import torch  # after --list, which should be instant
    from fixtures import prepare_models
    from measure import environment, peak_flops

    cuda = torch.cuda.is_available()
    profile = args.profile or ("gpu" if cuda else "cpu")
    gpu = f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}" if cuda else None
    machine = args.machine or machine_label(gpu=gpu)
    started = time.perf_counter()
    print(f"benchmark: {len(cases)} cases ({tier if not args.cases else args.cases}), profile {profile}, "
          f"machine {machine}; building the models once into {args.cache}", flush=True)
    paths = {size: prepare_models(Path(args.cache), size) for size in sorted({c.size for c in cases})}
    # MFU's denominator, measured as the cases run: one process with --threads threads
    torch.set_num_threads(args.threads)
    peaks = {dtype: peak_flops(dtype) for dtype in ("fp32", "bf16")}
    print("peak matmul FLOP/s: " + ", ".join(f"{k} {v / 1e9:,.0f} G" for k, v in peaks.items()), flush=True)
    log_dir = Path(args.cache) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    budget_s = args.budget_min * 60
    runs: dict[str, list[Row]] = {case.name: [] for case in cases}
    # Repeats alternate (a, b, a, b, ...), so that other load on a shared machine hits every case alike
    for repeat, case in ((r, c) for r in range(args.repeats) for c in cases):
        rows = runs[case.name]
        elapsed = time.perf_counter() - started
        if elapsed + case.est_s > budget_s and any(runs.values()):
            if repeat > 0 and rows:
                continue  # a case that ran keeps what it measured
            rows.append(Row(case=case.name, stage=case.stage, size=case.size, method=case.method,
                            launch=case.launch, procs=args.num_processes if case.distributed else 1,
                            status="skipped", note=f"time budget {args.budget_min:g} min"))
            print(f"  {case.name}: skipped (time budget)", flush=True)
            continue
        print(f"[{elapsed / 60:5.1f} min] {case.name} ..." + (f" (repeat {repeat + 1})" if repeat else ""),
              flush=True)
        selected = {k: v for k, v in paths[case.size].items() if k != "parameters"}
        row = run_case(case, selected, profile=profile, world_size=args.num_processes, bf16=args.bf16,
                       threads=args.threads, timeout=max(120.0, budget_s - elapsed + 60), log_dir=log_dir,
                       cpu=not cuda, peaks=peaks)
        rows.append(row)
        if row.status == "ok":
            print(f"    {row.throughput:.2f} {row.unit}, peak RSS {row.peak_rss_mib:.0f} MiB/proc, "
                  f"{row.wall_s:.0f} s", flush=True)
    rows = [median_row(measured) for measured in runs.values() if measured]

    total_min = (time.perf_counter() - started) / 60
    output = Path(args.output) if args.output else HERE / "results" / f"{machine}.md"
    invocation = "python benchmarks/run.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    invocations = [f"{invocation}  # {datetime.date.today().isoformat()}, {total_min:.1f} min"]
    extra_notes = list(args.note)
    if args.merge and output.with_suffix(".json").is_file():
        previous = json.loads(output.with_suffix(".json").read_text())
        rows, invocations = merge_rows(previous["rows"], rows), previous["invocations"] + invocations
        extra_notes = previous.get("notes", []) + extra_notes
    print("\n" + main_table(rows) + "\n")
    for table in (ppo_table(rows), phase_table(rows)):
        if table:
            print(table + "\n")
    settings = {"profile": profile, "work": {size: PROFILES[profile][size] for size in paths},
                "threads_per_process": args.threads, "num_processes (distributed cases)": args.num_processes,
                "bf16": args.bf16, "tier": tier if not args.cases else args.cases,
                "peak_flops": {k: round(v) for k, v in peaks.items()},
                "peak_flops_method": "measure.peak_flops: best of 3 timed runs of square matmuls (1024 on CPU, 8192 "
                                     f"on GPU), {args.threads} thread(s), at the start of the run",
                "total_minutes": round(total_min, 1)}
    notes = ["Runs (the last one may have re-measured some cases with `--merge`): " + "; ".join(
                 f"`{i}`" for i in invocations),
             "Models: `tiny` is the demo GPT-2 (2 layers, d=128); `124m` is a randomly initialised GPT2Config() "
             "model with a 50257-token BPE tokenizer built offline (+ pad), see benchmarks/fixtures.py.",
             "PPO settings: no ptx term, learning_rate 0 (same work; KL and ratio must stay 0 and 1), "
             "num_ppo_epochs/num_mini_batches as in Settings; the rollout forward batch is the whole local batch. "
             "`-bf16` cases run with `--bf16 true` (autocast; fp32 weights and optimizer state).",
             "GRPO: TRL's GRPOTrainer (`benchmarks/worker.py --stage grpo`), same models, prompts, batch and response "
             "length, 4 completions per prompt, beta 0.05, learning_rate 0; `generate` is its `_generate`, `score` "
             "the rest of `_generate_and_score_completions`, `optimise` the rest of the step.", *extra_notes]
    text = report(rows, machine=machine, environment=environment(), invocation=invocation, settings=settings,
                  notes=notes, date=datetime.date.today().isoformat())
    if not args.no_write:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        output.with_suffix(".json").write_text(json.dumps(
            {"invocations": invocations, "notes": extra_notes, "settings": settings, "environment": environment(),
             "rows": [row_to_json(r) for r in rows]}, indent=2) + "\n")
        print(f"wrote {output}")
    return 0 if all(r.status in ("ok", "skipped") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
