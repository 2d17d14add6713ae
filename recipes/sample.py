"""InstructGPT step 2: sample K distinct answers per prompt from a policy (scored by a reward model) to be ranked.

    python recipes/sample.py --config recipes/demo/sample.yaml
    accelerate launch --num_processes 8 recipes/sample.py --model_name_or_path runs/gpt2/ppo \
        --dataset_name Anthropic/hh-rlhf --reward_model_path runs/gpt2/reward --output_file runs/gpt2/samples.jsonl

A rerun appends only the prompts not yet in `--output_file`. Rank the file with `recipes/label.py`.
"""

import rlhf_recipes  # noqa: F401 - first: it quiets bitsandbytes' import-time kernel lookup

# isort: split
from trl import ModelConfig

from rlhf_recipes.config import ScriptArguments, run_main
from rlhf_recipes.feedback.sampling import SampleArguments, run_sampling


def main(script_args: ScriptArguments, sample_args: SampleArguments, model_args: ModelConfig) -> dict:
    return run_sampling(script_args, sample_args, model_args)


DATACLASSES = (ScriptArguments, SampleArguments, ModelConfig)

if __name__ == "__main__":
    run_main(main, DATACLASSES)
