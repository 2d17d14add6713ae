"""Run one benchmark case in this process (or in each process of an `accelerate launch`) and write its figures.

    python benchmarks/worker.py --case ppo-124m-lora-1proc --result_dir /tmp/x -- <recipe arguments>

It runs the real recipe (`recipes/<stage>.py`'s `main`, with the recipe's own argument parser), only swapping the
recipe's trainer class for a subclass that adds timers: step ends through a callback, tokens per batch in
`training_step`, and for PPO the time of `generate_responses`, `score_rollout` and `optimise` of every update.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from measure import StepTimer, now, write_result  # noqa: E402

TRAINER_CLASS = {"sft": "SFTTrainer", "rm": "RewardTrainer", "ppo": "PPOTrainer"}
RECIPE = {"sft": "sft", "rm": "reward", "ppo": "ppo"}


def load_recipe(name: str):
    from rlhf_recipes.config import load_recipe_module

    return load_recipe_module(REPO / "recipes" / f"{name}.py")


def count_parameters(model) -> tuple[int, int]:
    """(all, trainable) parameters; 4-bit weights count as their logical size."""
    total = trainable = 0
    for p in model.parameters():
        n = getattr(p, "ds_numel", None) or p.numel()  # ZeRO-3 keeps only a shard of each weight here
        if getattr(p, "quant_state", None) is not None or p.__class__.__name__ == "Params4bit":
            n *= 2  # two 4-bit values per stored byte
        total += n
        trainable += n if p.requires_grad else 0
    return total, trainable


def timed_trainer(base, timer: StepTimer, captured: dict):
    """A subclass of the recipe's trainer class that reports to `timer` (and, for PPO, times each phase)."""
    phases: dict[str, list[float]] = defaultdict(list)
    captured["phases"] = phases

    class Timed(base):
        def __init__(self, *args, callbacks=None, **kwargs):
            super().__init__(*args, callbacks=[*(callbacks or []), timer], **kwargs)
            captured["trainer"] = self

        def training_step(self, model, inputs, *args, **kwargs):  # SFT and reward trainers
            timer.add_batch(inputs)
            return super().training_step(model, inputs, *args, **kwargs)

        def _phase(self, name, method, *args):
            start = now()
            try:
                return method(*args)
            finally:
                phases[name].append(now() - start)

        # PPO (our trainer calls these through `self`, so the subclass sees every update)
        def generate_responses(self, queries):
            return self._phase("generate_s", super().generate_responses, queries)

        def score_rollout(self, queries, responses):
            return self._phase("score_s", super().score_rollout, queries, responses)

        def make_experience(self, queries):
            return self._phase("experience_s", super().make_experience, queries)

        def optimise(self, experience, update):
            return self._phase("optimise_s", super().optimise, experience, update)

    Timed.__name__ = Timed.__qualname__ = base.__name__
    return Timed


def run(case: str, stage: str, result_dir: str, recipe_argv: list[str]) -> None:
    from rlhf_recipes.config import parse_recipe_args

    start = now()
    module = load_recipe(RECIPE[stage])
    timer, captured = StepTimer(), {}
    name = TRAINER_CLASS[stage]
    setattr(module, name, timed_trainer(getattr(module, name), timer, captured))
    module.main(*parse_recipe_args(module.DATACLASSES, recipe_argv))
    trainer = captured["trainer"]
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    policy = getattr(unwrapped, "policy", unwrapped)
    params, trainable = count_parameters(policy)
    payload = {"case": case, "stage": stage, "step_times": timer.step_times(),
               "step_cpu_times": timer.step_cpu_times(), "tokens": timer.tokens,
               "padded_tokens": timer.padded_tokens, "params": params, "trainable": trainable,
               "process_s": now() - start, "world_size": trainer.accelerator.num_processes}
    if stage == "ppo":
        payload["episodes_per_update"] = trainer.sizes["batch_size"]
        payload["phases"] = {k: list(v) for k, v in captured["phases"].items()}
        payload["log_history"] = [{k: v for k, v in log.items() if k.startswith("time/")}
                                  for log in trainer.state.log_history]
    write_result(result_dir, payload)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", required=True)
    parser.add_argument("--stage", choices=sorted(TRAINER_CLASS), required=True)
    parser.add_argument("--result_dir", required=True)
    parser.add_argument("recipe_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    recipe_argv = args.recipe_args[1:] if args.recipe_args[:1] == ["--"] else args.recipe_args
    run(args.case, args.stage, args.result_dir, recipe_argv)


if __name__ == "__main__":
    main()
