"""Stage 1: TRL's `SFTTrainer`, with our tokenisation and crash safety (atomic checkpoints, stop on a non-finite loss)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import trl
from datasets import Dataset
from trl import SFTTrainer as TrlSFTTrainer

from .checkpoints import SafeTrainerMixin
from .data import encode_text
from .hub import HubPushArguments


@dataclass
class SFTConfig(HubPushArguments, trl.SFTConfig):
    """TRL's SFTConfig (every field, same names and defaults), except pushes: private by default."""


def encode_sft_example(tokenizer, prompt: str, completion: str) -> dict[str, Any]:
    """`input_ids` of prompt + completion + EOS (EOS only when the completion does not already end with it, as a
    chat-template completion ends with its end-of-turn token), `completion_mask` (1 on the completion's tokens) and
    the `completion` text as trained on.

    The completion starts where the tokens of the prompt alone and of the whole text first differ, in case a token
    spans the boundary.
    """
    eos = tokenizer.eos_token
    completion = completion if completion.endswith(eos) else completion + eos
    prompt_ids = encode_text(tokenizer, prompt)
    input_ids = encode_text(tokenizer, prompt + completion)
    shared = 0
    for a, b in zip(prompt_ids, input_ids):
        if a != b:
            break
        shared += 1
    return {"input_ids": input_ids, "completion_mask": [0] * shared + [1] * (len(input_ids) - shared),
            "completion": completion}


def _encode(example: dict, tokenizer) -> dict[str, Any]:
    if "prompt" in example:
        return encode_sft_example(tokenizer, example["prompt"], example["completion"])
    text = example["text"] if example["text"].endswith(tokenizer.eos_token) else example["text"] + tokenizer.eos_token
    return {"input_ids": encode_text(tokenizer, text), "text": text}


class SFTTrainer(SafeTrainerMixin, TrlSFTTrainer):
    """Loss on completion tokens only (`completion_only_loss`), EOS appended to every completion.

    Rows are tokenised here with `data.encode_text`, the one tokenisation the reward model and PPO use too: rendered
    text carries the chat template's BOS, and TRL's plain-text path would add the tokenizer's own a second time. TRL
    then builds the labels and truncates as usual.
    """

    def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
        if isinstance(dataset, Dataset) and "input_ids" not in dataset.column_names and formatting_func is None:
            dataset = dataset.map(_encode, fn_kwargs={"tokenizer": self._tokenizer},
                                  desc=f"Tokenizing {dataset_name} dataset")
        return super()._prepare_dataset(dataset, processing_class, args, packing, formatting_func, dataset_name)
