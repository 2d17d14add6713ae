"""Stage 3 with GRPO (Shao et al. 2024): advantages are each completion's reward relative to the other
completions of its prompt (mean-centred, std-scaled), no value model; TRL's GRPOTrainer scored by our reward model.

    accelerate launch --config_file accelerate_configs/single_gpu.yaml recipes/grpo.py --config recipes/gpt2/grpo.yaml
"""

import rlhf_recipes  # noqa: F401 - first: it quiets bitsandbytes' import-time kernel lookup

# isort: split
from trl import GRPOTrainer, ModelConfig

from rlhf_recipes.config import ScriptArguments, run_main
from rlhf_recipes.online import GRPOConfig, train_online


def main(script_args: ScriptArguments, training_args: GRPOConfig, model_args: ModelConfig) -> dict:
    return train_online("grpo", GRPOTrainer, script_args, training_args, model_args)


DATACLASSES = (ScriptArguments, GRPOConfig, ModelConfig)

if __name__ == "__main__":
    run_main(main, DATACLASSES)
