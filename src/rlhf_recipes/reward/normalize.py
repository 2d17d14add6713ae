"""Reward normalisation: shift the trained reward model so that a reference set scores 0 on average.

The pairwise loss only constrains reward differences, so the trained model's scores carry an arbitrary offset.
InstructGPT (Ouyang et al. 2022, sec. 3.5) normalises the reward model "using a bias so that the labeler
demonstrations achieve a mean score of 0 before doing RL". We do the same: after training, score a reference set
(by default the SFT demonstrations of the task, `prompt + completion + EOS`), and save `bias = -mean` beside the
checkpoint (`reward_normalization.json`, written with `rlhf_recipes.models.write_reward_bias`). Every later load
through `rlhf_recipes.models.load_model(kind="reward")` sets `model.reward_bias`, which
`rlhf_recipes.models.reward_scores` adds to each score.

The scoring runs on every process of a distributed run (ZeRO-3 needs all of them for each forward) over its shard
of the reference set; the scores are gathered, so every process computes the same bias.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from ..data import DataReport, detect_format, format_split, load_raw_dataset, log_report, resolve_template
from .trainer import RewardDataCollator, encode_response, sequence_rewards

logger = logging.getLogger(__name__)


def load_reference_set(
    name: str, *, samples: int, tokenizer: PreTrainedTokenizerBase | None = None,
    max_prompt_tokens: int | None = None, split: str = "train", config: str | None = None,
    conversation_template: str = "auto", field: str = "normalization_dataset",
) -> tuple[Dataset, DataReport]:
    """The first `samples` rows of a dataset in any SFT format, as `prompt`, `completion` rows (or `text`), rendered
    like the training data (`conversation_template`). Errors name `field`, the setting the dataset came from."""
    raw = load_raw_dataset(name, config, field=field)
    if split not in raw:
        split = "train"
    dataset = raw[split]
    dataset = dataset.select(range(min(samples, len(dataset))))
    fmt = detect_format(dataset.column_names, f"{name} (`{field}`)", "sft")
    reference, report = format_split(dataset, stage="sft", fmt=fmt, source=name, split=f"{split} (normalisation)",
                                      tokenizer=tokenizer, max_prompt_tokens=max_prompt_tokens,
                                      template=resolve_template(tokenizer, conversation_template))
    log_report(report)
    return reference, report


def reference_from_comparisons(dataset: Dataset, samples: int) -> Dataset:
    """Fallback reference set: the preferred response of the first `samples` comparisons (pairs or rankings)."""
    dataset = dataset.select(range(min(samples, len(dataset))))
    best = "responses" if "responses" in dataset.column_names else "chosen"
    prompts = dataset["prompt"] if "prompt" in dataset.column_names else [""] * len(dataset)
    completions = [row[0] for row in dataset[best]] if best == "responses" else dataset[best]
    return Dataset.from_dict({"prompt": prompts, "completion": completions})


def tokenize_reference(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int | None) -> list[list[int]]:
    """`prompt + completion + EOS` (or `text + EOS`) per row, cut like the reward model's training sequences."""
    if "text" in dataset.column_names:
        return [encode_response(tokenizer, "", text, max_length)[0] for text in dataset["text"]]
    return [encode_response(tokenizer, p, c, max_length)[0] for p, c in zip(dataset["prompt"], dataset["completion"])]


@torch.no_grad()
def score_sequences(
    model, sequences: list[list[int]], tokenizer: PreTrainedTokenizerBase, *, batch_size: int = 32,
    accelerator=None,
) -> torch.Tensor:
    """Raw rewards (no bias) of token sequences; with an accelerator, sharded over processes and gathered."""
    collator = RewardDataCollator(pad_token_id=tokenizer.pad_token_id, padding_side=tokenizer.padding_side)
    loader = DataLoader([{"responses_ids": [ids]} for ids in sequences], batch_size=batch_size, collate_fn=collator)
    if accelerator is not None:
        loader = accelerator.prepare_data_loader(loader)
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    scores = []
    for batch in loader:
        rewards = sequence_rewards(model, batch["input_ids"].to(device), batch["attention_mask"].to(device))
        if accelerator is not None:
            rewards = accelerator.gather_for_metrics(rewards)
        scores.append(rewards.cpu())
    model.train(was_training)
    return torch.cat(scores).double()


def compute_reward_bias(scores: torch.Tensor) -> float:
    """The bias that makes `scores` average 0."""
    return -float(scores.mean())


def normalize_reward_model(trainer, reference: Dataset, *, source: str = "") -> dict[str, Any]:
    """Score `reference` with the trainer's model, set `model.reward_bias` so that it averages 0, return the details.

    The caller saves the details with `rlhf_recipes.models.write_reward_bias(output_dir, **details)`.
    """
    tokenizer = trainer.processing_class
    sequences = tokenize_reference(reference, tokenizer, trainer.args.max_length)
    scores = score_sequences(trainer.model, sequences, tokenizer, batch_size=trainer.args.per_device_eval_batch_size,
                             accelerator=trainer.accelerator)
    bias = compute_reward_bias(scores)
    trainer.accelerator.unwrap_model(trainer.model).reward_bias = bias
    details = {
        "bias": bias,
        "reference_dataset": source,
        "reference_samples": int(scores.numel()),
        "raw_mean": float(scores.mean()),
        "raw_std": float(scores.std()) if scores.numel() > 1 else 0.0,
    }
    if not all(math.isfinite(v) for v in (details["bias"], details["raw_std"])):
        raise FloatingPointError(f"Reward normalisation produced non-finite statistics: {details}")
    logger.info("Reward normalisation on %d reference sequences of %s: raw mean %.4f, std %.4f -> bias %.4f",
                details["reference_samples"], source, details["raw_mean"], details["raw_std"], bias)
    return details
