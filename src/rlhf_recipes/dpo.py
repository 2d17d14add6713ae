"""Direct preference optimisation (Rafailov et al. 2023): TRL's `DPOTrainer` on the same labels the reward model
learns from, with no reward model and no sampling.

What this module adds to TRL's trainer is what every stage of this project shares:

* Data: `prompt`, `chosen`, `rejected` rows from `rlhf_recipes.data`'s `dpo` stage (pairs, HH conversations,
  conversational pairs, K-wise rankings turned into the pairs `ranking_pairs` picks), already rendered to text.
* Tokenisation: the prompt as `data.encode_text` encodes it (one BOS where the tokenizer uses one, none added over a
  chat template's), each response tokenised apart and ended by one EOS, exactly the tokens PPO samples and the reward
  model scores. TRL's own path would tokenise prompt + response together and add a second BOS over a chat template's.
* Crash safety: atomic, manifested checkpoints, a checkpoint and a clean stop on SIGTERM/SIGINT, a stop on a
  non-finite loss (`checkpoints.SafeTrainerMixin`).

The reference is the starting policy unless `ref_model_path` names another model. With LoRA it is the policy with
its adapter disabled (TRL does that when it wraps the model itself and is given no reference): one copy of the
weights in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import trl
from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from .checkpoints import SafeTrainerMixin
from .data import PAIR_SELECTIONS, encode_text
from .hub import HubPushArguments

# Metrics of TRL's evaluation that the stage reports (before and after training) in stage_metrics.json.
EVAL_METRICS = {"eval_loss": "eval_loss", "eval_rewards/accuracies": "eval_accuracy",
                "eval_rewards/margins": "eval_margin"}


@dataclass
class DPOConfig(HubPushArguments, trl.DPOConfig):
    """TRL's `DPOConfig` (every field, same names and defaults: `beta`, `loss_type`, `label_smoothing`, ...) with how
    rankings become pairs and which model is the reference; pushes are private unless asked
    (`hub.HubPushArguments`)."""

    ranking_pairs: str = field(
        default="best_vs_rest",
        metadata={
            "help": "The pairs a K-wise ranking gives: 'all' (every C(K,2) pair, as the reward model learns them), "
            "'best_vs_rest' (the best response against each other one: K-1 pairs) or 'best_vs_worst' (one pair). "
            "Responses of a tie group (`ties` column) are never paired with each other.",
            "choices": list(PAIR_SELECTIONS),
        },
    )
    ref_model_path: str | None = field(
        default=None,
        metadata={
            "help": "The reference policy of the KL term (a folder or Hub id with the policy's tokenizer). Unset: the "
            "model training starts from (with LoRA: that model with its adapter disabled, no second copy).",
            "role": "policy",
        },
    )

    def __post_init__(self):
        super().__post_init__()
        from .ranges import check_arguments

        check_arguments(self)  # the declared ranges (`beta` > 0, `ranking_pairs`), also for a config built in code


def _response_ids(tokenizer: PreTrainedTokenizerBase, prompt: str, response: str) -> list[int]:
    # Without a prompt (HH pairs compared as whole conversations) the response is the whole text and gets the BOS.
    ids = tokenizer(response, add_special_tokens=False)["input_ids"] if prompt else encode_text(tokenizer, response)
    return ids if ids and ids[-1] == tokenizer.eos_token_id else ids + [tokenizer.eos_token_id]


def encode_preference(tokenizer: PreTrainedTokenizerBase, prompt: str, chosen: str, rejected: str) -> dict[str, Any]:
    """`prompt_ids`, `chosen_ids`, `rejected_ids` as TRL's preference collator takes them: the prompt encoded alone,
    each response tokenised apart and ended with exactly one EOS (a chat template's end-of-turn token is the EOS)."""
    return {"prompt_ids": encode_text(tokenizer, prompt) if prompt else [],
            "chosen_ids": _response_ids(tokenizer, prompt, chosen),
            "rejected_ids": _response_ids(tokenizer, prompt, rejected)}


class DPOTrainer(SafeTrainerMixin, trl.DPOTrainer):
    """TRL's `DPOTrainer` with our tokenisation of `prompt`/`chosen`/`rejected` text and crash-safe checkpoints.

    Sequences longer than `max_length` are cut at their end by TRL's collator (`truncation_mode: keep_start`); the
    loader has already cut each prompt to at most half of `max_length` from the left.
    """

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name: str):
        if not isinstance(dataset, Dataset) or "prompt_ids" in dataset.column_names \
                or not {"chosen", "rejected"} <= set(dataset.column_names):
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        if "prompt" not in dataset.column_names:
            dataset = dataset.add_column("prompt", [""] * len(dataset))
        dataset = dataset.map(
            lambda row: encode_preference(self._tokenizer, row["prompt"], row["chosen"], row["rejected"]),
            desc=f"Tokenizing {dataset_name} dataset",
        )
        if args.max_length is not None:  # as TRL: a prompt that fills the context leaves nothing to learn from
            dataset = dataset.filter(lambda row: len(row["prompt_ids"]) < args.max_length)
        return dataset
