"""Best-of-n: sample n responses per prompt from a policy (the SFT model) and keep the reward model's favourite.

    python recipes/best_of_n.py --config recipes/demo/best_of_n.yaml --n 16
"""

import rlhf_recipes  # noqa: F401 - first: it quiets bitsandbytes' import-time kernel lookup

# isort: split
from trl import ModelConfig

from rlhf_recipes.best_of_n import BestOfNArguments, best_of_n, summarize, write_best_of_n
from rlhf_recipes.config import ConfigError, ScriptArguments, run_main
from rlhf_recipes.data import load_stage_dataset
from rlhf_recipes.models import check_same_tokenizer, load_model, load_tokenizer


def main(script_args: ScriptArguments, bon_args: BestOfNArguments, model_args: ModelConfig) -> dict:
    policy_path = bon_args.policy_path or model_args.model_name_or_path
    if not policy_path or not bon_args.reward_model_path:
        raise ConfigError("Best-of-n needs a policy (`policy_path`) and a reward model (`reward_model_path`).")
    remote = bon_args.trust_remote_code
    tokenizer = load_tokenizer(policy_path, trust_remote_code=remote, padding_side="left",
                               conversation_template=script_args.conversation_template)
    check_same_tokenizer(tokenizer, bon_args.reward_model_path, trust_remote_code=remote)
    dataset, _ = load_stage_dataset(script_args, "prompts", tokenizer=tokenizer, seed=bon_args.seed,
                                    max_prompt_tokens=tokenizer.model_max_length - bon_args.response_length
                                    if tokenizer.model_max_length < 100_000 else None)
    if bon_args.split not in dataset:
        raise ConfigError(f"{script_args.dataset_name} has no {bon_args.split!r} split (found {list(dataset)}); "
                         "set `split` to one of them.")
    prompts = dataset[bon_args.split]["prompt"][: bon_args.num_prompts]
    policy = load_model(model_args, tokenizer, model_name_or_path=policy_path, trust_remote_code=remote,
                        apply_lora=False).eval()
    reward_model = load_model(model_args, tokenizer, kind="reward", role="reward", model_name_or_path=bon_args.reward_model_path,
                              trust_remote_code=remote, apply_lora=False).eval()

    result = best_of_n(policy, reward_model, tokenizer, prompts, n=bon_args.n,
                       response_length=bon_args.response_length, temperature=bon_args.temperature,
                       seed=bon_args.seed, batch_size=bon_args.batch_size,
                       missing_eos_penalty=bon_args.missing_eos_penalty)
    labeler_scores = None
    if bon_args.simulated_labeler:
        from rlhf_recipes.demo.labeler import labeler_score

        labeler_scores = [labeler_score(p, r) for p, r in zip(result.prompts, result.responses)]
    metrics = summarize(result, bon_args.n, tokenizer.eos_token_id, labeler_scores)
    write_best_of_n(bon_args.output_dir, result, metrics, labeler_scores)
    print(f"Best-of-{bon_args.n} on {len(prompts)} prompts: {metrics}")
    return metrics


DATACLASSES = (ScriptArguments, BestOfNArguments, ModelConfig)

if __name__ == "__main__":
    run_main(main, DATACLASSES)
