"""TRL's `GRPOConfig` and `RLOOConfig`, plus the fields that connect them to our SFT policy and reward model.

The added fields keep the names of our `PPOConfig` (`sft_model_path`, `reward_model_path`,
`missing_eos_penalty`), so one recipe can be switched between PPO, GRPO and RLOO by changing the script.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trl

from ..config import ConfigError
from ..hub import HubPushArguments


@dataclass
class RewardModelArguments:
    """Where the policy starts and what scores it; shared by the GRPO and RLOO stages."""

    sft_model_path: str | None = field(
        default=None, metadata={"role": "policy",
            "help": "The SFT policy to start from (default: model_name_or_path)."}
    )
    reward_model_path: str | None = field(
        default=None, metadata={"role": "reward",
            "help": "The reward model (stage 2 folder or Hub id); its normalisation is applied."}
    )
    missing_eos_penalty: float | None = field(
        default=None,
        metadata={"range": "[0, inf)",
            "help": "Subtracted from the score of a completion that hit max_completion_length without EOS "
                    "(as PPO's missing_eos_penalty)."},
    )
    reward_batch_size: int = field(default=64, metadata={"range": "[1, inf)",
        "help": "Completions per reward-model forward."})

    def check_reward_model(self) -> None:
        if not self.reward_model_path:
            raise ConfigError("No reward model: set `reward_model_path` (the stage-2 folder or a Hub id) in the recipe.")


@dataclass
class GRPOConfig(HubPushArguments, trl.GRPOConfig, RewardModelArguments):
    """TRL's GRPOConfig (every field, same names and defaults, except pushes: private by default) with our
    reward-model fields."""


@dataclass
class RLOOConfig(HubPushArguments, trl.RLOOConfig, RewardModelArguments):
    """TRL's RLOOConfig (every field, same names and defaults, except pushes: private by default) with our
    reward-model fields."""
