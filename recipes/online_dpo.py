"""Stage 3 with online DPO (Guo et al. 2024): each step samples two completions per prompt from the current policy,
our reward model picks the better one, and the policy takes a DPO step on that pair; TRL's experimental
OnlineDPOTrainer scored by our reward model (normalised, read at the EOS, PPO's missing-EOS penalty).

    accelerate launch --config_file accelerate_configs/single_gpu.yaml recipes/online_dpo.py \\
        --config recipes/demo/online_dpo.yaml
"""

import rlhf_recipes  # noqa: F401 - first: it quiets bitsandbytes' import-time kernel lookup

# isort: split
from trl import ModelConfig

from rlhf_recipes.config import ScriptArguments, run_main
from rlhf_recipes.online import train_online
from rlhf_recipes.online.online_dpo import FINAL_METRICS, OnlineDPOConfig, OnlineDPOTrainer


def main(script_args: ScriptArguments, training_args: OnlineDPOConfig, model_args: ModelConfig) -> dict:
    return train_online("online_dpo", OnlineDPOTrainer, script_args, training_args, model_args,
                        completion_length_field="max_new_tokens", final_metrics=FINAL_METRICS,
                        penalty_in_reward=False)


DATACLASSES = (ScriptArguments, OnlineDPOConfig, ModelConfig)

if __name__ == "__main__":
    run_main(main, DATACLASSES)
