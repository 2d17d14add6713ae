"""Stage 3, PPO-ptx: maximise E[r(x,y) - beta*log(pi_RL(y|x)/pi_SFT(y|x))] + gamma*E_pretrain[log pi_RL(x)].

    accelerate launch --config_file accelerate_configs/deepspeed_zero2.yaml recipes/ppo.py --config recipes/gpt2/ppo.yaml
"""

import rlhf_recipes  # noqa: F401 - first: it quiets bitsandbytes' import-time kernel lookup

# isort: split
from trl import ModelConfig

from rlhf_recipes.config import ConfigError, ScriptArguments, run_main
from rlhf_recipes.data import load_stage_dataset, resolve_template, tokenize_prompts, tokenize_texts
from rlhf_recipes.host_memory import keep_freed_memory
from rlhf_recipes.models import check_lengths, load_model, load_policy_tokenizer
from rlhf_recipes.outputs import check_hub_token, prepare_output_dir, resolve_resume_checkpoint, save_stage
from rlhf_recipes.ppo import PPOConfig, PPOTrainer


def main(script_args: ScriptArguments, training_args: PPOConfig, model_args: ModelConfig) -> dict:
    check_hub_token(training_args)
    prepare_output_dir(training_args, script_args)  # a finished stage is not trained over unasked
    keep_freed_memory()  # no page faults on every step for the memory the last step freed
    if not training_args.reward_model_path:
        raise ConfigError("PPO needs a reward model: set `reward_model_path` (the reward stage's output folder).")
    sft_path, tokenizer = load_policy_tokenizer(script_args, training_args, model_args)
    remote = training_args.trust_remote_code
    # Every model reads prompt + response: the smallest context of the three bounds it.
    context = check_lengths(training_args, [sft_path, training_args.reward_model_path, training_args.value_model_path],
                            stage="PPO", generation=(None, "response_length"), revision=model_args.model_revision,
                            trust_remote_code=remote)
    # Prompts are cut from the left so that prompt + response fits the context window.
    dataset, reports = load_stage_dataset(script_args, "prompts", tokenizer=tokenizer, seed=training_args.seed,
                                          max_prompt_tokens=context - training_args.response_length,
                                          report_dir=training_args.output_dir)
    ptx_dataset = None
    if training_args.ptx_coef > 0:
        ptx_dataset = tokenize_texts(training_args.ptx_dataset, tokenizer, training_args.ptx_max_length,
                                     resolve_template(tokenizer, script_args.conversation_template))

    # With LoRA the reference pi_SFT is the policy with its adapter disabled: no second copy of the weights.
    start_path = training_args.policy_model_path or sft_path
    if model_args.use_peft and start_path != sft_path:
        raise ConfigError("With LoRA the KL reference is the policy with its adapter disabled, so policy_model_path "
                          "cannot differ from sft_model_path.")
    policy = load_model(model_args, tokenizer, model_name_or_path=start_path, trust_remote_code=remote)
    ref_policy = None if model_args.use_peft else load_model(model_args, tokenizer, model_name_or_path=sft_path,
                                                             trust_remote_code=remote, apply_lora=False)
    reward_model = load_model(model_args, tokenizer, kind="reward", role="reward", model_name_or_path=training_args.reward_model_path,
                              trust_remote_code=remote, apply_lora=False)
    # InstructGPT initialises the value function from the reward model.
    value_model = load_model(model_args, tokenizer, kind="value", role="value", trust_remote_code=remote,
                             model_name_or_path=training_args.value_model_path or training_args.reward_model_path)

    trainer = PPOTrainer(args=training_args, processing_class=tokenizer, model=policy, ref_model=ref_policy,
                         reward_model=reward_model, value_model=value_model,
                         train_dataset=tokenize_prompts(dataset["train"], tokenizer),
                         eval_dataset=tokenize_prompts(dataset["test"], tokenizer) if "test" in dataset else None,
                         ptx_dataset=ptx_dataset)
    state = trainer.train(resume_from_checkpoint=resolve_resume_checkpoint(training_args))
    last = [log for log in state.log_history if "objective/kl" in log]
    metrics = {k: last[-1][k] for k in ("objective/scores", "objective/kl", "objective/kl_coef")} if last else {}
    trainer.accelerator.print(f"PPO metrics: {metrics}")
    save_stage(trainer, stage="ppo", script_args=script_args, model_args=model_args, metrics=metrics,
               reports=reports)
    return metrics


DATACLASSES = (ScriptArguments, PPOConfig, ModelConfig)

if __name__ == "__main__":
    run_main(main, DATACLASSES)
