"""Online DPO (Guo et al. 2024, "Direct language model alignment from online AI feedback"): TRL's experimental
`OnlineDPOTrainer` with our reward model as the judge of each pair.

Each step samples two completions per prompt from the current policy, our reward model (normalised score read at
the EOS, PPO's missing-EOS penalty) picks the better one, and the DPO loss (`sigmoid` or `ipo`, `beta`) is taken on
that pair against the reference (the SFT policy; with LoRA the policy with its adapter disabled).

Two corrections to TRL 1.16's trainer, both in `OnlineDPOTrainer` below:

* TRL pads each completion after its EOS and hands those padded ids to a reward function: our reward model reads
  its score at the last token, which would then be a pad. The ids are cut after the first EOS before scoring.
* TRL scores log-probabilities of left-padded prompt + completion rows without position ids, so for a model that
  numbers positions 0, 1, ... along the row (GPT-2, Llama) every prompt shorter than the longest of its batch is
  read at shifted positions, unlike at generation. Position ids are taken from the attention mask here, as PPO and
  the reward model do.

The missing-EOS penalty is TRL's own (`missing_eos_penalty`, the same field name and meaning as PPO's), so the
reward function does not subtract it a second time.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from ..checkpoints import SafeTrainerMixin
from ..hub import HubPushArguments
from .config import RewardModelArguments

with warnings.catch_warnings():  # the "experimental API" notice; the docs and this module's docstring say so
    warnings.simplefilter("ignore")
    from trl.experimental.online_dpo import OnlineDPOConfig as TrlOnlineDPOConfig
    from trl.experimental.online_dpo import OnlineDPOTrainer as TrlOnlineDPOTrainer

# TRL's log keys that the stage reports in stage_metrics.json and the model card (the first marks a training log).
FINAL_METRICS = ("objective/scores", "objective/scores_margin", "objective/kl", "objective/entropy",
                 "rewards/accuracies", "val/contain_eos_token")


def cut_after_eos(ids: list[int], eos_token_ids: list[int]) -> list[int]:
    """A completion up to and including its first EOS (TRL pads after it); unchanged when it never stopped."""
    for position, token in enumerate(ids):
        if token in eos_token_ids:
            return ids[: position + 1]
    return ids


@dataclass
class OnlineDPOConfig(HubPushArguments, TrlOnlineDPOConfig, RewardModelArguments):
    """TRL's experimental `OnlineDPOConfig` (every field, same names and defaults: `beta`, `loss_type`,
    `max_new_tokens`, `temperature`, `missing_eos_penalty`, ...) with our reward-model fields; pushes are private
    unless asked (`hub.HubPushArguments`)."""


class OnlineDPOTrainer(SafeTrainerMixin, TrlOnlineDPOTrainer):
    """TRL's `OnlineDPOTrainer`, scoring completions cut at their EOS, with position ids from the attention mask, and
    our crash-safe checkpoints."""

    def _calculate_rewards_from_functions(self, prompts, completions, completion_ids_list, **reward_kwargs):
        cut = [cut_after_eos(ids, self.eos_token_ids) for ids in completion_ids_list]
        return super()._calculate_rewards_from_functions(prompts, completions, cut, **reward_kwargs)

    def _forward(self, model, prompt_ids, prompt_mask, completion_ids, completion_mask, vision_inputs=None):
        # TRL's `_forward`, with position ids; the prompt is cut from the left to `max_length` as TRL does.
        excess = max(prompt_ids.size(1) + completion_ids.size(1) - self.max_length, 0)
        prompt_ids, prompt_mask = prompt_ids[:, excess:], prompt_mask[:, excess:]
        input_ids = torch.cat((prompt_ids, completion_ids), dim=1)
        attention_mask = torch.cat((prompt_mask, completion_mask), dim=1)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
        logits = logits[:, prompt_ids.size(1) - 1: -1]  # the positions that predict the completion's tokens
        return torch.take_along_dim(logits.log_softmax(dim=-1), completion_ids.unsqueeze(-1), dim=2).squeeze(-1)
