"""Stage 2, the reward model: TRL's `RewardTrainer` with K-wise rankings, grouped batching and normalisation.

    losses.py     pure loss functions (pairwise, InstructGPT's grouped ranking loss) and accuracy/margin
    config.py     `RewardConfig`: TRL's plus `ranking_batching`, `normalization_dataset`, `normalization_samples`
    trainer.py    `RewardTrainer`, the tokenisation (prompt + response + EOS) and the collator
    normalize.py  the bias that makes a reference set score 0 on average (saved beside the checkpoint)

Loading a trained reward model and scoring with it (bias included) lives in `rlhf_recipes.models`
(`load_model(kind="reward")`, `reward_scores`), so that later stages need not import this package.
"""

from .config import RewardConfig
from .losses import expand_ranking, grouped_ranking_loss, pairwise_loss, ranking_pairs
from .normalize import load_reference_set, normalize_reward_model, reference_from_comparisons
from .trainer import RewardDataCollator, RewardTrainer, encode_response, last_token_index, prepare_reward_dataset

__all__ = [
    "RewardConfig",
    "RewardDataCollator",
    "RewardTrainer",
    "encode_response",
    "expand_ranking",
    "grouped_ranking_loss",
    "last_token_index",
    "load_reference_set",
    "normalize_reward_model",
    "pairwise_loss",
    "prepare_reward_dataset",
    "ranking_pairs",
    "reference_from_comparisons",
]
