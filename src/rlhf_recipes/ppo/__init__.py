"""Stage 3: our PPO-ptx trainer. `core` holds the math, `config` the `PPOConfig`, `trainer` the loop."""

from .config import PPOConfig
from .trainer import NonFiniteError, PPOTrainer

__all__ = ["NonFiniteError", "PPOConfig", "PPOTrainer"]
