"""rlhf-recipes: InstructGPT's SFT, reward-model and PPO-ptx stages for GPT-2-family models."""

__version__ = "0.1.0"
