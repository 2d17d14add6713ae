"""Run one benchmark case in this process (or in each process of an `accelerate launch`) and write its figures.

    python benchmarks/worker.py --case ppo-124m-lora-1proc --stage ppo --result_dir /tmp/x -- <recipe arguments>
    python benchmarks/worker.py --case grpo-124m-full-1proc --stage grpo --result_dir /tmp/x -- --policy P ...

It runs the real recipe (`recipes/<stage>.py`'s `main`, with the recipe's own argument parser), only swapping the
recipe's trainer class for a subclass that adds timers: step ends through a callback, tokens per batch in
`training_step`, and for PPO the time of `generate_responses`, `score_rollout` and `optimise` of every update,
the shapes each update ran on (for the FLOP count) and the logged KL and ratio. `--stage grpo` runs TRL's
`GRPOTrainer` (no recipe of ours) on the same models, prompts and response length, timed the same way, as a reference.
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

TRAINER_CLASS = {"sft": "SFTTrainer", "rm": "RewardTrainer", "ppo": "PPOTrainer", "grpo": "GRPOTrainer"}
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
    shapes: list[dict] = []
    captured["shapes"] = shapes

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
            experience = self._phase("experience_s", super().make_experience, queries)
            shapes.append({"batch": int(queries.shape[0]), "prompt": int(queries.shape[1]),
                           "response": int(experience["responses"].shape[1]),
                           "response_tokens": int(experience["mask"].sum())})
            return experience

        # TRL's GRPOTrainer: sampling, then rewards and reference log-probs, inside one method
        def _generate(self, prompts):
            return self._phase("generate_s", super()._generate, prompts)

        def _generate_and_score_completions(self, inputs):
            start = len(phases["generate_s"])
            out = self._phase("rollout_s", super()._generate_and_score_completions, inputs)
            generated = sum(phases["generate_s"][start:])
            phases["score_s"].append(phases["rollout_s"][-1] - generated)
            if len(phases["generate_s"]) > start + 1:  # one entry per rollout
                del phases["generate_s"][start + 1:]
                phases["generate_s"][start] = generated
            shapes.append({"batch": int(out["prompt_ids"].shape[0]), "prompt": int(out["prompt_ids"].shape[1]),
                           "response": int(out["completion_ids"].shape[1]),
                           "response_tokens": int(out["completion_mask"].sum())})
            return out

        def optimise(self, experience, update):
            return self._phase("optimise_s", super().optimise, experience, update)

    Timed.__name__ = Timed.__qualname__ = base.__name__
    return Timed


def model_dims(model) -> dict[str, int]:
    config = model.config
    return {"layers": config.n_layer, "width": config.n_embd, "vocab": config.vocab_size}


def run_grpo(trainer_class, argv: list[str]) -> None:
    """TRL's GRPOTrainer on our benchmark models: `batch` completions per step (num_generations 4 per prompt),
    `response_length` tokens, one iteration per batch, the reward model as the reward function, beta 0.05 (a
    reference model, as PPO's KL), temperature 1 and no top-k/top-p, as our PPO samples."""
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl import GRPOConfig

    parser = argparse.ArgumentParser()
    for flag in ("--policy", "--reward", "--prompts_file", "--output_dir"):
        parser.add_argument(flag, required=True)
    for flag in ("--batch", "--steps", "--response_length"):
        parser.add_argument(flag, type=int, required=True)
    for flag in ("--bf16", "--use_cpu", "--use_peft"):
        parser.add_argument(flag, default="false")
    args = parser.parse_args(argv)
    tokenizer = AutoTokenizer.from_pretrained(args.policy, padding_side="left")
    policy = AutoModelForCausalLM.from_pretrained(args.policy, dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(args.reward, dtype=torch.float32, num_labels=1)
    prompts = load_dataset("json", data_files=args.prompts_file)["train"]
    config = GRPOConfig(
        output_dir=args.output_dir, per_device_train_batch_size=args.batch, num_generations=4,
        max_completion_length=args.response_length, temperature=1.0, top_k=0, top_p=1.0, beta=0.05,
        learning_rate=0.0, max_steps=args.steps, logging_steps=1, save_strategy="no", report_to="none",
        bf16=args.bf16 == "true", use_cpu=args.use_cpu == "true", seed=42, disable_tqdm=True)
    peft_config = None
    if args.use_peft == "true":
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, target_modules=["c_attn"], task_type="CAUSAL_LM")
    trainer = trainer_class(model=policy, reward_funcs=[reward], args=config, train_dataset=prompts,
                            processing_class=tokenizer, reward_processing_classes=[tokenizer], peft_config=peft_config)
    trainer.train()


def run(case: str, stage: str, result_dir: str, recipe_argv: list[str]) -> None:
    start = now()
    timer, captured = StepTimer(), {}
    if stage == "grpo":
        import trl

        run_grpo(timed_trainer(trl.GRPOTrainer, timer, captured), recipe_argv)
    else:
        from rlhf_recipes.config import parse_recipe_args

        module = load_recipe(RECIPE[stage])
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
    # what the run really used (a recipe setting such as auto_bf16 can override the case's flag)
    payload["mixed_precision"] = trainer.accelerator.mixed_precision
    if stage in ("ppo", "grpo"):
        payload["phases"] = {k: list(v) for k, v in captured["phases"].items()}
        payload["shapes"] = captured["shapes"]
        payload["model"] = model_dims(policy)
    if stage == "ppo":
        payload["episodes_per_update"] = trainer.sizes["batch_size"]
        payload["epochs"] = trainer.args.num_ppo_epochs
        payload["log_history"] = [{k: v for k, v in log.items() if k.startswith("time/")}
                                  for log in trainer.state.log_history]
        payload["invariants"] = [{"kl": log.get("objective/kl"), "ratio": log.get("val/ratio")}
                                 for log in trainer.state.log_history if "objective/kl" in log]
    if stage == "grpo":
        payload["episodes_per_update"] = trainer.args.per_device_train_batch_size * trainer.accelerator.num_processes
        payload["epochs"] = trainer.args.num_iterations
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
