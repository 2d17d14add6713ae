"""Stage 2, the reward model: the SFT model with a scalar head, trained so that r(x, y_w) > r(x, y_l).

Pairs (prompt/chosen/rejected or HH conversations) and K-wise rankings (prompt + responses, best first); rankings
are expanded into C(K,2) pairs (`ranking_batching: pairs`) or kept together as in InstructGPT (`grouped`). After
training the model is normalised so that the reference set (the SFT demonstrations) scores 0 on average.

    accelerate launch --config_file accelerate_configs/deepspeed_zero3.yaml recipes/reward.py \
        --config recipes/gpt2/reward.yaml
"""

import rlhf_recipes  # noqa: F401 - first: it quiets bitsandbytes' import-time kernel lookup

# isort: split
from transformers import set_seed
from trl import ModelConfig

from rlhf_recipes.config import ScriptArguments, run_main
from rlhf_recipes.data import load_stage_dataset
from rlhf_recipes.host_memory import keep_freed_memory
from rlhf_recipes.models import check_lengths, load_model, load_tokenizer, write_reward_bias
from rlhf_recipes.outputs import check_hub_token, prepare_output_dir, resolve_resume_checkpoint, save_stage
from rlhf_recipes.reward import (
    RewardConfig,
    RewardTrainer,
    load_reference_set,
    normalize_reward_model,
    reference_from_comparisons,
)


def main(script_args: ScriptArguments, training_args: RewardConfig, model_args: ModelConfig) -> dict:
    check_hub_token(training_args)
    prepare_output_dir(training_args, script_args)  # a finished stage is not trained over unasked
    keep_freed_memory()  # no page faults on every step for the memory the last step freed
    tokenizer = load_tokenizer(model_args.model_name_or_path, revision=model_args.model_revision,
                               trust_remote_code=training_args.trust_remote_code,
                               conversation_template=script_args.conversation_template)
    check_lengths(training_args, model_args.model_name_or_path, stage="reward model", fill_unset=("max_length",),
                  revision=model_args.model_revision, trust_remote_code=training_args.trust_remote_code)
    # Leave at least half of the context to the response: longer prompts are cut from the left (or dropped).
    max_prompt_tokens = training_args.max_length // 2 if training_args.max_length else None
    dataset, reports = load_stage_dataset(script_args, "reward", tokenizer=tokenizer,
                                          max_prompt_tokens=max_prompt_tokens, seed=training_args.seed,
                                          max_length=training_args.max_length, report_dir=training_args.output_dir)
    # The normalisation's reference set is read now, before any model loads: a bad one fails in seconds, not after
    # training (unset, it is the preferred responses of the training comparisons).
    reference, source = None, training_args.normalization_dataset
    if training_args.normalization_samples > 0:
        if source:
            reference, report = load_reference_set(source, samples=training_args.normalization_samples,
                                                   tokenizer=tokenizer, max_prompt_tokens=max_prompt_tokens,
                                                   conversation_template=script_args.conversation_template)
            reports.append(report)
        else:
            source = f"{script_args.dataset_name} (preferred responses)"
            reference = reference_from_comparisons(dataset["train"], training_args.normalization_samples)
    set_seed(training_args.seed)  # the scalar head is new: initialise it reproducibly
    model = load_model(model_args, tokenizer, kind="reward", trust_remote_code=training_args.trust_remote_code)
    trainer = RewardTrainer(model=model, args=training_args, train_dataset=dataset["train"],
                            eval_dataset=dataset.get("test"), processing_class=tokenizer)

    metrics = {}
    if trainer.eval_dataset is not None:
        # Evaluate the untrained RM inside train(): under DeepSpeed, an evaluate() before train() builds an
        # inference engine that train() then cannot train with.
        training_args.eval_on_start = True
    train_result = trainer.train(resume_from_checkpoint=resolve_resume_checkpoint(training_args))
    metrics["train_loss"] = train_result.training_loss
    if trainer.eval_dataset is not None:
        before = next(logs for logs in trainer.state.log_history if "eval_accuracy" in logs)
        metrics.update({f"{key}_before": before[key] for key in ("eval_loss", "eval_accuracy", "eval_margin")})
        after = trainer.evaluate()
        metrics.update({key: after[key] for key in ("eval_loss", "eval_accuracy", "eval_margin")})

    if reference is not None:
        normalization = normalize_reward_model(trainer, reference, source=source)
        metrics.update(reward_bias=normalization["bias"], reference_raw_mean=normalization["raw_mean"])
        if trainer.accelerator.is_main_process:
            write_reward_bias(training_args.output_dir, **normalization)
    trainer.accelerator.print(f"Reward model metrics: {metrics}")
    save_stage(trainer, stage="reward", script_args=script_args, model_args=model_args, metrics=metrics,
               reports=reports)
    return metrics


DATACLASSES = (ScriptArguments, RewardConfig, ModelConfig)

if __name__ == "__main__":
    run_main(main, DATACLASSES)
