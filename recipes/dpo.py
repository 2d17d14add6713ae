"""Stage 3 without a reward model, DPO (Rafailov et al. 2023): the SFT policy learns the preference labels directly,
with a KL-like pull (`beta`) towards a reference policy; TRL's DPOTrainer behind our loaders and outputs.

Pairs (prompt/chosen/rejected, HH conversations, conversational pairs) and K-wise rankings (prompt + responses, best
first, optional `ties`): a ranking gives the pairs `ranking_pairs` picks (all, best_vs_rest, best_vs_worst).
`loss_type` (sigmoid, ipo, hinge, robust, ...) and `beta` are TRL's.

    accelerate launch --config_file accelerate_configs/deepspeed_zero3.yaml recipes/dpo.py --config recipes/gpt2/dpo.yaml
"""

import rlhf_recipes  # noqa: F401 - first: it quiets bitsandbytes' import-time kernel lookup

# isort: split
from trl import ModelConfig

from rlhf_recipes.config import ScriptArguments, run_main
from rlhf_recipes.data import load_stage_dataset
from rlhf_recipes.dpo import EVAL_METRICS, DPOConfig, DPOTrainer
from rlhf_recipes.host_memory import keep_freed_memory
from rlhf_recipes.models import check_lengths, check_same_tokenizer, load_model, load_tokenizer, lora_config
from rlhf_recipes.outputs import check_hub_token, resolve_resume_checkpoint, save_stage


def main(script_args: ScriptArguments, training_args: DPOConfig, model_args: ModelConfig) -> dict:
    check_hub_token(training_args)
    keep_freed_memory()  # no page faults on every step for the memory the last step freed
    remote = training_args.trust_remote_code
    tokenizer = load_tokenizer(model_args.model_name_or_path, revision=model_args.model_revision,
                               trust_remote_code=remote, conversation_template=script_args.conversation_template)
    check_same_tokenizer(tokenizer, training_args.ref_model_path, trust_remote_code=remote)
    check_lengths(training_args, [model_args.model_name_or_path, training_args.ref_model_path], stage="DPO",
                  fill_unset=("max_length",), revision=model_args.model_revision, trust_remote_code=remote)
    # Leave at least half of the context to the responses: longer prompts are cut from the left (or dropped).
    dataset, reports = load_stage_dataset(script_args, "dpo", tokenizer=tokenizer,
                                          max_prompt_tokens=training_args.max_length // 2, seed=training_args.seed,
                                          max_length=training_args.max_length, report_dir=training_args.output_dir,
                                          pair_selection=training_args.ranking_pairs)
    # LoRA is TRL's to apply (peft_config): the reference is then the policy with its adapter disabled.
    model = load_model(model_args, tokenizer, trust_remote_code=remote, apply_lora=False)
    ref_model = None
    if training_args.ref_model_path or not (model_args.use_peft or training_args.precompute_ref_log_probs):
        ref_model = load_model(model_args, tokenizer, trust_remote_code=remote, apply_lora=False,
                               model_name_or_path=training_args.ref_model_path or model_args.model_name_or_path)
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=training_args, train_dataset=dataset["train"],
                         eval_dataset=dataset.get("test"), processing_class=tokenizer,
                         peft_config=lora_config(model_args) if model_args.use_peft else None)

    metrics = {}
    if trainer.eval_dataset is not None:
        # Evaluate the starting policy inside train(): under DeepSpeed an evaluate() before train() builds an
        # inference engine that train() then cannot train with.
        training_args.eval_on_start = True
    train_result = trainer.train(resume_from_checkpoint=resolve_resume_checkpoint(training_args))
    metrics["train_loss"] = train_result.training_loss
    if trainer.eval_dataset is not None:
        before = next((logs for logs in trainer.state.log_history if "eval_loss" in logs), {})
        after = trainer.evaluate()
        for key, name in EVAL_METRICS.items():
            if key in before:
                metrics[f"{name}_before"] = before[key]
            if key in after:
                metrics[name] = after[key]
    trainer.accelerator.print(f"DPO metrics: {metrics}")
    save_stage(trainer, stage="dpo", script_args=script_args, model_args=model_args, metrics=metrics,
               reports=reports)
    return metrics


DATACLASSES = (ScriptArguments, DPOConfig, ModelConfig)

if __name__ == "__main__":
    run_main(main, DATACLASSES)
