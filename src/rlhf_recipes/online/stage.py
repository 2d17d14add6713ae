"""GRPO and RLOO as thin wrappers over TRL: our loaders, our reward model as the reward function, our outputs.

TRL keeps the algorithms (sampling `num_generations` completions per prompt, group-relative or leave-one-out
advantages, the clipped loss, the KL to the reference). What this module adds is the plumbing every stage of this
project shares: the SFT tokenizer and policy from `models.py`, the prompts from `rlhf_recipes.data` (cut from the left to fit
the context), the reward model's normalised score read at the EOS token with the missing-EOS penalty (exactly
PPO's reward, through `models.score_responses`), and `save_stage` (metrics, data report, model card, push).

Why a reward *function* rather than handing TRL the reward model: TRL scores a model by re-tokenising the decoded
text, which drops the EOS token the score is read at (and the normalisation bias is ours).
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl import ModelConfig

from ..data import encode_text, load_stage_dataset
from ..host_memory import keep_freed_memory
from ..models import check_lengths, load_model, load_policy_tokenizer, lora_config, score_responses
from ..outputs import check_hub_token, resolve_resume_checkpoint, save_stage
from .config import RewardModelArguments

# Metrics of TRL's log that the stage reports in stage_metrics.json and the model card.
FINAL_METRICS = ("reward", "reward_std", "kl", "entropy", "completions/mean_length", "completions/clipped_ratio")


class RewardModelReward:
    """A TRL reward function: r(x, y) of our reward model, normalised, read at the EOS, minus the missing-EOS penalty.

    TRL calls it with the prompts (text) and the completions' token ids, which end with the EOS when the policy
    stopped; the prompt is re-tokenised as the policy saw it (no special tokens).
    """

    __name__ = "reward_model"  # the name TRL logs the reward under (`rewards/reward_model/mean`)

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *,
                 missing_eos_penalty: float | None = None, batch_size: int = 64) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.missing_eos_penalty = missing_eos_penalty
        self.batch_size = batch_size

    def to(self, device) -> RewardModelReward:
        self.model.to(device)
        return self

    def __call__(self, prompts: list[str], completions: list[str], completion_ids: list[list[int]],
                 **kwargs: Any) -> list[float]:
        prompt_ids = [encode_text(self.tokenizer, p) for p in prompts]
        scores = score_responses(self.model, prompt_ids, completion_ids, pad_token_id=self.tokenizer.pad_token_id,
                                 eos_token_id=self.tokenizer.eos_token_id,
                                 missing_eos_penalty=self.missing_eos_penalty, batch_size=self.batch_size)
        return scores.tolist()


def train_online(stage: str, trainer_class: type, script_args, training_args: RewardModelArguments,
                 model_args: ModelConfig, *, completion_length_field: str = "max_completion_length",
                 final_metrics: tuple[str, ...] = FINAL_METRICS, penalty_in_reward: bool = True) -> dict[str, float]:
    """Train `trainer_class` (TRL's GRPOTrainer, RLOOTrainer or online DPO) from the SFT policy against our reward
    model. `completion_length_field` names the config's response length; the stage's metrics are the
    `final_metrics` of the last log holding the first of them; `penalty_in_reward: False` when the trainer subtracts
    `missing_eos_penalty` itself (online DPO), so that it is not subtracted twice."""
    check_hub_token(training_args)
    training_args.check_reward_model()
    keep_freed_memory()  # no page faults on every step for the memory the last step freed
    sft_path, tokenizer = load_policy_tokenizer(script_args, training_args, model_args)
    remote = training_args.trust_remote_code
    # The one length check every stage uses: the policy and the reward model both read prompt + completion.
    context = check_lengths(training_args, [sft_path, training_args.reward_model_path], stage=stage.upper(),
                            generation=(None, completion_length_field), revision=model_args.model_revision,
                            trust_remote_code=remote)
    dataset, reports = load_stage_dataset(script_args, "prompts", tokenizer=tokenizer, seed=training_args.seed,
                                          max_prompt_tokens=context - getattr(training_args, completion_length_field),
                                          report_dir=training_args.output_dir)

    # LoRA is TRL's to apply (peft_config): with it, the reference is the policy with the adapter disabled.
    policy = load_model(model_args, tokenizer, model_name_or_path=sft_path, trust_remote_code=remote,
                        apply_lora=False)
    reward_model = load_model(model_args, tokenizer, kind="reward", model_name_or_path=training_args.reward_model_path,
                              trust_remote_code=remote, apply_lora=False)
    penalty = training_args.missing_eos_penalty if penalty_in_reward else None
    reward = RewardModelReward(reward_model, tokenizer, missing_eos_penalty=penalty,
                               batch_size=training_args.reward_batch_size)
    trainer = trainer_class(model=policy, reward_funcs=reward, args=training_args, train_dataset=dataset["train"],
                            eval_dataset=dataset["test"] if "test" in dataset else None, processing_class=tokenizer,
                            peft_config=lora_config(model_args) if model_args.use_peft else None)
    reward.to(trainer.accelerator.device)  # a plain callable: TRL leaves its placement to us
    trainer.train(resume_from_checkpoint=resolve_resume_checkpoint(training_args))

    logged = [log for log in trainer.state.log_history if final_metrics[0] in log]
    metrics = {k: logged[-1][k] for k in final_metrics if logged and k in logged[-1]}
    trainer.accelerator.print(f"{stage.upper()} metrics: {metrics}")
    save_stage(trainer, stage=stage, script_args=script_args, model_args=model_args, metrics=metrics,
               reports=reports)
    return metrics
