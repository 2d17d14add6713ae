"""Compare policies (e.g. base, SFT and PPO) on held-out prompts, judged by the reward model.

    python recipes/evaluate.py --config recipes/demo/evaluate.yaml
"""

import rlhf_recipes  # noqa: F401 - first: it quiets bitsandbytes' import-time kernel lookup

# isort: split
from pathlib import Path

from trl import ModelConfig

from rlhf_recipes.config import ConfigError, ScriptArguments, run_main
from rlhf_recipes.data import load_stage_dataset
from rlhf_recipes.evaluation import EvalArguments, evaluate_policies, write_report
from rlhf_recipes.models import check_lengths, load_model, load_tokenizer


def main(script_args: ScriptArguments, eval_args: EvalArguments, model_args: ModelConfig) -> list[dict]:
    if not eval_args.policy_paths:
        raise ConfigError("Give at least one policy with --policy_paths PATH [PATH ...].")
    remote = eval_args.trust_remote_code
    tokenizer = load_tokenizer(eval_args.policy_paths[0], trust_remote_code=remote, padding_side="left",
                               conversation_template=script_args.conversation_template)
    context = check_lengths(eval_args, [*eval_args.policy_paths, eval_args.reward_model_path,
                                        eval_args.reference_model_path], stage="evaluation",
                            generation=(None, "response_length"), trust_remote_code=remote)
    # Prompts rendered as the policies were trained (the chat template's generation prompt, or HH's cue), cut from
    # the left so that prompt + response fits every model's context.
    dataset, _ = load_stage_dataset(script_args, "prompts", seed=eval_args.seed, tokenizer=tokenizer,
                                    max_prompt_tokens=context - eval_args.response_length,
                                    report_dir=eval_args.output_dir)
    split = dataset["test"] if "test" in dataset else dataset["train"]
    prompts = split["prompt"][: eval_args.num_prompts]

    names = eval_args.policy_names or [Path(p).name for p in eval_args.policy_paths]
    policies = {name: load_model(model_args, tokenizer, model_name_or_path=path, trust_remote_code=remote,
                                 apply_lora=False).eval()
                for name, path in zip(names, eval_args.policy_paths)}
    reward_model = None
    if eval_args.reward_model_path:
        reward_model = load_model(model_args, tokenizer, kind="reward", role="reward", model_name_or_path=eval_args.reward_model_path,
                                  trust_remote_code=remote, apply_lora=False).eval()
    reference = policies[names[0]]
    if eval_args.reference_model_path:
        reference = load_model(model_args, tokenizer, model_name_or_path=eval_args.reference_model_path,
                               trust_remote_code=remote, apply_lora=False).eval()

    rows, samples = evaluate_policies(policies, tokenizer, prompts, reward_model=reward_model, reference=reference,
                                      args=eval_args)
    table = write_report(eval_args.output_dir, rows, samples, prompts)
    print(f"\nEvaluation on {len(prompts)} held-out prompts (reference for KL: "
          f"{eval_args.reference_model_path or names[0]}):\n{table}\n")
    return rows


DATACLASSES = (ScriptArguments, EvalArguments, ModelConfig)

if __name__ == "__main__":
    run_main(main, DATACLASSES)
