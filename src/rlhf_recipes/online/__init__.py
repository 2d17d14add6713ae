"""Stage 3 with TRL's living online trainers, GRPO and RLOO, scored by our reward model (see `stage.py`)."""

from .config import GRPOConfig, RLOOConfig
from .stage import RewardModelReward, train_online

__all__ = ["GRPOConfig", "RLOOConfig", "RewardModelReward", "train_online"]
