"""`RewardConfig`: TRL's reward training arguments plus ranking batching and reward normalisation."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import RewardConfig as TrlRewardConfig

from ..hub import HubPushArguments

RANKING_BATCHING = ("pairs", "grouped")


@dataclass
class RewardConfig(HubPushArguments, TrlRewardConfig):
    """TRL's `RewardConfig` with the options InstructGPT's reward model needs on top (and private pushes by
    default, `hub.HubPushArguments`).

    `ranking_batching`: `pairs` expands each ranking of K into C(K,2) independent pairs; `grouped` keeps the K
    responses of a prompt together as one batch element (K forward passes, loss averaged over its C(K,2) pairs; see
    `rlhf_recipes.reward.losses`). With `grouped`, `per_device_train_batch_size` counts prompts, not pairs.

    `normalization_dataset` / `normalization_samples`: after training, score a reference set (prompt + completion +
    EOS; by default the SFT demonstrations of the task) and store a bias with the checkpoint so that the set scores 0
    on average. Every later load of the reward model (PPO, evaluation) adds that bias.
    """

    ranking_batching: str = field(
        default="pairs",
        metadata={
            "help": "How rankings of K responses are batched: 'pairs' (C(K,2) independent pairs, shuffled) or "
            "'grouped' (InstructGPT: the K responses of a prompt form one batch element, loss averaged over its "
            "C(K,2) comparisons).",
            "choices": list(RANKING_BATCHING),
        },
    )
    normalization_dataset: str | None = field(
        default=None,
        metadata={
            "help": "Reference set whose mean reward is set to 0 after training: a dataset (Hub id, file or folder) "
            "in any SFT format, usually the SFT demonstrations of the same task. Unset: the preferred responses of the "
            "training comparisons."
        },
    )
    normalization_samples: int = field(
        default=1024,
        metadata={"range": "[0, inf)",
            "help": "Score the first N rows of the reference set for the normalisation bias (0: no bias)."},
    )

    def __post_init__(self):
        from ..ranges import check_arguments

        check_arguments(self)  # the declared ranges, also for a config built in code
        super().__post_init__()
