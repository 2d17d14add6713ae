"""Stage 3 with RLOO (Ahmadian et al. 2024): REINFORCE with the leave-one-out baseline (the mean reward of the
other completions of the prompt), no value model; TRL's RLOOTrainer scored by our reward model.

    accelerate launch --config_file accelerate_configs/single_gpu.yaml recipes/rloo.py --config recipes/gpt2/rloo.yaml
"""

import rlhf_recipes  # noqa: F401 - first: it quiets bitsandbytes' import-time kernel lookup

# isort: split
from trl import ModelConfig, RLOOTrainer

from rlhf_recipes.config import ScriptArguments, run_main
from rlhf_recipes.online import RLOOConfig, train_online


def main(script_args: ScriptArguments, training_args: RLOOConfig, model_args: ModelConfig) -> dict:
    return train_online("rloo", RLOOTrainer, script_args, training_args, model_args)


DATACLASSES = (ScriptArguments, RLOOConfig, ModelConfig)

if __name__ == "__main__":
    run_main(main, DATACLASSES)
