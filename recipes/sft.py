"""Stage 1, supervised fine-tuning: learn the demonstrations' responses, with the loss on response tokens only.

    accelerate launch --config_file accelerate_configs/deepspeed_zero2.yaml recipes/sft.py --config recipes/gpt2/sft.yaml
"""

from trl import ModelConfig, SFTConfig, SFTTrainer

from rlhf_recipes.config import ScriptArguments, parse_recipe_args
from rlhf_recipes.data import load_stage_dataset
from rlhf_recipes.models import load_model, load_tokenizer
from rlhf_recipes.outputs import check_hub_token, resolve_resume_checkpoint, save_stage


def main(script_args: ScriptArguments, training_args: SFTConfig, model_args: ModelConfig) -> dict:
    check_hub_token(training_args)
    tokenizer = load_tokenizer(model_args.model_name_or_path, revision=model_args.model_revision,
                               trust_remote_code=training_args.trust_remote_code)
    # Leave at least half of the context to the response: longer prompts are cut from the left (or dropped).
    dataset, reports = load_stage_dataset(script_args, "sft", tokenizer=tokenizer,
                                          max_prompt_tokens=training_args.max_length // 2, seed=training_args.seed)
    model = load_model(model_args, tokenizer, trust_remote_code=training_args.trust_remote_code)
    trainer = SFTTrainer(model=model, args=training_args, train_dataset=dataset["train"],
                         eval_dataset=dataset.get("test"), processing_class=tokenizer)

    metrics = {}
    if trainer.eval_dataset is not None:
        metrics["eval_loss_before"] = trainer.evaluate()["eval_loss"]
    train_result = trainer.train(resume_from_checkpoint=resolve_resume_checkpoint(training_args))
    metrics["train_loss"] = train_result.training_loss
    if trainer.eval_dataset is not None:
        metrics["eval_loss_after"] = trainer.evaluate()["eval_loss"]
    trainer.accelerator.print(f"SFT metrics: {metrics}")
    save_stage(trainer, stage="sft", script_args=script_args, model_args=model_args, metrics=metrics,
               reports=reports)
    return metrics


DATACLASSES = (ScriptArguments, SFTConfig, ModelConfig)

if __name__ == "__main__":
    main(*parse_recipe_args(DATACLASSES))
