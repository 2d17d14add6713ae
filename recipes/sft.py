"""Stage 1, supervised fine-tuning: learn the demonstrations' responses, with the loss on response tokens only.

    accelerate launch --config_file accelerate_configs/deepspeed_zero2.yaml recipes/sft.py --config recipes/gpt2/sft.yaml
"""

import rlhf_recipes  # noqa: F401 - first: it quiets bitsandbytes' import-time kernel lookup

# isort: split
from transformers import TrainerCallback
from trl import ModelConfig

from rlhf_recipes.config import ScriptArguments, run_main
from rlhf_recipes.data import load_stage_dataset
from rlhf_recipes.host_memory import keep_freed_memory
from rlhf_recipes.models import check_lengths, load_model, load_tokenizer
from rlhf_recipes.outputs import check_hub_token, prepare_output_dir, resolve_resume_checkpoint, save_stage
from rlhf_recipes.sft import SFTConfig, SFTTrainer


class FirstEvaluation(TrainerCallback):
    """Keeps the metrics of the first evaluation during `train()` (the one `eval_on_start` runs)."""

    def __init__(self) -> None:
        self.metrics: dict | None = None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.metrics is None:
            self.metrics = metrics


def main(script_args: ScriptArguments, training_args: SFTConfig, model_args: ModelConfig) -> dict:
    check_hub_token(training_args)
    prepare_output_dir(training_args, script_args)  # a finished stage is not trained over unasked
    keep_freed_memory()  # no page faults on every step for the memory the last step freed
    tokenizer = load_tokenizer(model_args.model_name_or_path, revision=model_args.model_revision,
                               trust_remote_code=training_args.trust_remote_code,
                               conversation_template=script_args.conversation_template)
    check_lengths(training_args, model_args.model_name_or_path, stage="SFT", fill_unset=("max_length",),
                  revision=model_args.model_revision, trust_remote_code=training_args.trust_remote_code)
    # Leave at least half of the context to the response: longer prompts are cut from the left (or dropped).
    dataset, reports = load_stage_dataset(script_args, "sft", tokenizer=tokenizer,
                                          max_prompt_tokens=training_args.max_length // 2, seed=training_args.seed,
                                          max_length=training_args.max_length, report_dir=training_args.output_dir)
    model = load_model(model_args, tokenizer, trust_remote_code=training_args.trust_remote_code)
    trainer = SFTTrainer(model=model, args=training_args, train_dataset=dataset["train"],
                         eval_dataset=dataset.get("test"), processing_class=tokenizer)

    metrics = {}
    first_eval = FirstEvaluation()
    if trainer.eval_dataset is not None:
        # Evaluate inside train(), once the model is prepared: under DeepSpeed ZeRO-1/2 `evaluate()` before
        # `train()` fails ("ZeRO inference only makes sense with ZeRO Stage 3").
        trainer.args.eval_on_start = True
        trainer.add_callback(first_eval)
    train_result = trainer.train(resume_from_checkpoint=resolve_resume_checkpoint(training_args))
    if first_eval.metrics is not None:
        metrics["eval_loss_before"] = first_eval.metrics["eval_loss"]
    metrics["train_loss"] = train_result.training_loss
    if trainer.eval_dataset is not None:
        metrics["eval_loss_after"] = trainer.evaluate()["eval_loss"]
    trainer.accelerator.print(f"SFT metrics: {metrics}")
    save_stage(trainer, stage="sft", script_args=script_args, model_args=model_args, metrics=metrics,
               reports=reports)
    return metrics


DATACLASSES = (ScriptArguments, SFTConfig, ModelConfig)

if __name__ == "__main__":
    run_main(main, DATACLASSES)
