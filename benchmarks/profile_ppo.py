"""Where our PPO trainer spends an update: torch profiler over one update (after a warm-up update) of the real
recipe, with the phases labelled (generate, score, experience, optimise).

    python benchmarks/profile_ppo.py                          # 124M shape, full fine-tuning, the bench's CPU profile
    python benchmarks/profile_ppo.py --bf16                   # the same in bf16 autocast
    python benchmarks/profile_ppo.py --size tiny --method lora --rows 25

Prints the operators by self time and the phase totals; writes `benchmarks/results/<machine>-ppo-profile.md`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PHASES = ("generate_responses", "score_rollout", "make_experience", "optimise")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="124m", choices=["tiny", "124m"])
    parser.add_argument("--method", default="full", choices=["full", "lora", "qlora"])
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (`--bf16 true`)")
    parser.add_argument("--machine")
    parser.add_argument("--cache", default=str(HERE.parent / "runs" / "bench"))
    parser.add_argument("--no_write", action="store_true")
    parser.add_argument("--shapes", action="store_true", help="group operators by input shapes too")
    args = parser.parse_args()

    import torch
    from fixtures import prepare_models
    from harness import PROFILES, Case, machine_label, recipe_args
    from measure import StepTimer
    from transformers import TrainerCallback
    from worker import load_recipe

    from rlhf_recipes.config import parse_recipe_args

    paths = prepare_models(Path(args.cache), args.size)
    paths = {k: str(v) for k, v in paths.items() if k != "parameters"}
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    profiler = torch.profiler.profile(activities=activities, record_shapes=args.shapes)

    class ProfileSecondUpdate(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 1:
                profiler.__enter__()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                profiler.__exit__(None, None, None)

    module = load_recipe("ppo")
    base = module.PPOTrainer

    class Labelled(base):
        def __init__(self, *a, callbacks=None, **kw):
            super().__init__(*a, callbacks=[*(callbacks or []), ProfileSecondUpdate(), StepTimer()], **kw)

    for name in PHASES:
        def wrapper(self, *a, _name=name, **kw):
            with torch.profiler.record_function(f"## {_name}"):
                return getattr(base, _name)(self, *a, **kw)
        setattr(Labelled, name, wrapper)
    module.PPOTrainer = Labelled

    with tempfile.TemporaryDirectory(prefix="profile-ppo-") as tmp:
        case = Case("ppo", args.size, args.method)
        argv = recipe_args(case, paths, tmp, work={"steps": 2}, bf16=args.bf16)
        module.main(*parse_recipe_args(module.DATACLASSES, argv))
    events = profiler.key_averages()
    phases = {e.key: e.cpu_time_total / 1e6 for e in events if e.key.startswith("## ")}
    ops = profiler.key_averages(group_by_input_shape=args.shapes).table(
        sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=50, max_shapes_column_width=60)
    lines = [f"{k[3:]}: {v:.2f} s" for k, v in sorted(phases.items(), key=lambda kv: -kv[1])]
    print("\n".join(lines) + "\n\n" + ops)
    if not args.no_write:
        machine = args.machine or machine_label()
        work = PROFILES["cpu"][args.size]["ppo"]
        precision = "bf16" if args.bf16 else "fp32"
        out = HERE / "results" / f"{machine}-ppo-profile{'-bf16' if args.bf16 else ''}.md"
        out.write_text("\n".join([
            f"# Profile of one PPO update of our trainer ({machine})", "",
            f"Measured {datetime.date.today().isoformat()} with `python benchmarks/profile_ppo.py "
            f"{shlex.join(sys.argv[1:])}`: model `{args.size}`, {args.method}, {precision}, the second of two "
            f"updates ({work['batch']} episodes, {work['response_length']}-token responses, {work['epochs']} PPO "
            f"epoch(s)), {torch.get_num_threads()} thread(s).", "",
            "Phases (inclusive; make_experience contains generate_responses and score_rollout):", "",
            *[f"* {line}" for line in lines], "", "Operators by self CPU time:", "", "```", ops, "```", ""]))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
