"""`RewardTrainer`: TRL's reward trainer with K-wise rankings, InstructGPT's grouped batching and exact accuracy.

What it changes from `trl.RewardTrainer` (which it reuses for model preparation, PEFT, pad token and dropout):

* Data: rows are `prompt, chosen, rejected` or `prompt, responses` (a ranking, best first), as `rlhf_recipes.data`'s reward
  stage produces them. With `ranking_batching: pairs` a ranking of K becomes its C(K,2) pairs; with `grouped` a pair
  becomes a ranking of K=2. Every sequence is `prompt + response + EOS`; a sequence longer than `max_length` is cut
  in its response and keeps its final EOS, so it is trained on instead of silently filtered out (TRL drops it).
* Scores: read at the last real token (the EOS; the sequence classifier takes the rightmost non-pad token), with
  position ids from the attention mask, so a left- or right-padded batch gives the same scores.
* Loss: `losses.pairwise_loss` for pairs, `losses.grouped_ranking_loss` for grouped rankings (one forward over all
  the K responses of every prompt of the batch).
* Crash safety: atomic checkpoints and a stop on a non-finite loss, like every trainer of the pipeline.
* Metrics: accuracy (share of pairs ordered like the labels) and mean margin r_w - r_l are exact counts over every
  pair seen since the last log, for pairs and grouped batches alike; `evaluate()` returns them as `eval_accuracy`
  and `eval_margin`.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerBase, Trainer
from transformers.data.data_collator import DataCollatorMixin
from trl import RewardTrainer as TrlRewardTrainer
from trl.trainer.utils import pad

from ..checkpoints import SafeTrainerMixin
from ..data import encode_text
from .config import RewardConfig
from .losses import expand_ranking, group_rewards, grouped_ranking_loss, pairwise_loss, ranking_differences

logger = logging.getLogger(__name__)

PAIR_COLUMNS = ("chosen_ids", "rejected_ids")
GROUP_COLUMN = "responses_ids"
TIE_COLUMN = "tie_groups"


# ----------------------------------------------------------------------------------------------------------------
# Tokenisation
# ----------------------------------------------------------------------------------------------------------------
def encode_response(
    tokenizer: PreTrainedTokenizerBase, prompt: str, response: str, max_length: int | None
) -> tuple[list[int], bool]:
    """Token ids of `prompt + response + EOS`, at most `max_length` of them; and whether the response was cut.

    The EOS (a chat template's end-of-turn token, see `models.load_tokenizer`) is always the last token, once: it is
    where the reward is read, and where PPO stops the policy. An over-long response is cut at its end; when
    there is no separate prompt (HH pairs compared as whole conversations) the conversation is cut at its start,
    because the part that differs is at the end.
    """
    eos = tokenizer.eos_token_id
    # Tokenised apart, as PPO sees them: the prompt's ids, then the sampled response's. With no prompt the response is
    # a whole conversation and gets the BOS (`encode_text`: never a second one over a chat template's).
    prompt_ids = encode_text(tokenizer, prompt) if prompt else []
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] if prompt else encode_text(tokenizer,
                                                                                                         response)
    if response_ids and response_ids[-1] == eos:
        response_ids = response_ids[:-1]
    truncated = False
    if max_length is not None:
        if len(prompt_ids) > max_length - 1:  # rlhf_recipes.data keeps prompts shorter; cut from the left like it does
            prompt_ids = prompt_ids[len(prompt_ids) - (max_length - 1):]
        budget = max_length - 1 - len(prompt_ids)
        if len(response_ids) > budget:
            truncated = True
            response_ids = response_ids[len(response_ids) - budget:] if not prompt_ids else response_ids[:budget]
    return prompt_ids + response_ids + [eos], truncated


def _expand_rankings(batch: dict[str, list]) -> dict[str, list]:
    out: dict[str, list] = {"prompt": [], "chosen": [], "rejected": []}
    ties = batch.get("ties") or [None] * len(batch["prompt"])
    for prompt, responses, tied in zip(batch["prompt"], batch["responses"], ties):
        for chosen, rejected in expand_ranking(responses, tied):  # tied pairs left out
            out["prompt"].append(prompt)
            out["chosen"].append(chosen)
            out["rejected"].append(rejected)
    return out


def _pairs_as_rankings(example: dict[str, Any]) -> dict[str, Any]:
    return {"responses": [example["chosen"], example["rejected"]]}


def prepare_reward_dataset(
    dataset: Dataset, tokenizer: PreTrainedTokenizerBase, ranking_batching: str, max_length: int | None,
    name: str = "train",
) -> Dataset:
    """Tokenise reward rows for `ranking_batching`: `chosen_ids`/`rejected_ids` (pairs) or `responses_ids` (grouped)."""
    columns = set(dataset.column_names)
    if set(PAIR_COLUMNS) <= columns or GROUP_COLUMN in columns:
        return dataset  # already tokenised
    is_ranking = "responses" in columns
    if not is_ranking and not {"chosen", "rejected"} <= columns:
        raise ValueError(
            f"The {name} dataset has columns {sorted(columns)}; the reward trainer needs prompt/chosen/rejected or "
            "prompt/responses rows (load it with `rlhf_recipes.data.load_stage_dataset(..., 'reward')`)."
        )
    if "prompt" not in columns:
        dataset = dataset.add_column("prompt", [""] * len(dataset))
    if ranking_batching == "pairs" and is_ranking:
        before = len(dataset)
        dataset = dataset.map(_expand_rankings, batched=True, remove_columns=dataset.column_names,
                              desc=f"Expanding {name} rankings into pairs")
        logger.info("%s: %d rankings expanded into %d pairs.", name, before, len(dataset))
    elif ranking_batching == "grouped" and not is_ranking:
        dataset = dataset.map(_pairs_as_rankings, remove_columns=["chosen", "rejected"])

    truncated = 0

    def tokenize(example: dict[str, Any]) -> dict[str, Any]:
        nonlocal truncated
        if ranking_batching == "grouped":
            encoded = [encode_response(tokenizer, example["prompt"], r, max_length) for r in example["responses"]]
            truncated += sum(cut for _, cut in encoded)
            out = {GROUP_COLUMN: [ids for ids, _ in encoded]}
            if "ties" in example:  # the tie group of each position, -1 for none: the loss masks tied pairs
                groups = [-1] * len(example["responses"])
                for g, members in enumerate(example["ties"] or []):
                    for position in members:
                        groups[position] = g
                out[TIE_COLUMN] = groups
            return out
        chosen, cut_chosen = encode_response(tokenizer, example["prompt"], example["chosen"], max_length)
        rejected, cut_rejected = encode_response(tokenizer, example["prompt"], example["rejected"], max_length)
        truncated += cut_chosen + cut_rejected
        return {"chosen_ids": chosen, "rejected_ids": rejected}

    keep = {"margin"} if ranking_batching == "pairs" else {TIE_COLUMN}
    dataset = dataset.map(tokenize, remove_columns=[c for c in dataset.column_names if c not in keep],
                          desc=f"Tokenizing {name} dataset", load_from_cache_file=False)
    if truncated:
        logger.warning("%s: %d responses were longer than max_length=%s tokens and were cut (their EOS kept).",
                       name, truncated, max_length)
    return dataset


# ----------------------------------------------------------------------------------------------------------------
# Batching
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class RewardDataCollator(DataCollatorMixin):
    """Pad reward examples into one batch of sequences.

    Pairs: `input_ids` holds the B chosen sequences then the B rejected ones (TRL's layout). Grouped rankings:
    `input_ids` holds the K_1 responses of the first prompt, then the K_2 of the second, ...; `group_sizes` gives
    each K_b. Padding goes on `padding_side`; the trainer derives position ids from `attention_mask`.
    """

    pad_token_id: int
    padding_side: str = "right"
    pad_to_multiple_of: int | None = None
    return_tensors: str = "pt"

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        extra: dict[str, torch.Tensor] = {}
        if GROUP_COLUMN in examples[0]:
            sequences = [ids for example in examples for ids in example[GROUP_COLUMN]]
            extra["group_sizes"] = torch.tensor([len(example[GROUP_COLUMN]) for example in examples])
            if TIE_COLUMN in examples[0]:
                k_max = max(len(example[TIE_COLUMN]) for example in examples)
                extra[TIE_COLUMN] = torch.tensor([list(e[TIE_COLUMN]) + [-1] * (k_max - len(e[TIE_COLUMN]))
                                                  for e in examples])
        else:
            sequences = [e["chosen_ids"] for e in examples] + [e["rejected_ids"] for e in examples]
            if "margin" in examples[0]:
                extra["margin"] = torch.tensor([e["margin"] for e in examples], dtype=torch.float)
        tensors = [torch.tensor(ids, dtype=torch.long) for ids in sequences]
        input_ids = pad(tensors, padding_value=self.pad_token_id, padding_side=self.padding_side,
                        pad_to_multiple_of=self.pad_to_multiple_of)
        attention_mask = pad([torch.ones_like(t) for t in tensors], padding_value=0, padding_side=self.padding_side,
                             pad_to_multiple_of=self.pad_to_multiple_of)
        return {"input_ids": input_ids, "attention_mask": attention_mask, **extra}


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, ... over the real tokens whatever the padding side (pads get 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row (the EOS), for left- and right-padded batches alike."""
    length = attention_mask.shape[-1]
    return length - 1 - attention_mask.long().flip(-1).argmax(-1)


def sequence_rewards(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Raw scalar reward per sequence (no normalisation bias), read at its EOS, independent of the padding side."""
    outputs = model(input_ids=input_ids, attention_mask=attention_mask,
                    position_ids=position_ids_from_mask(attention_mask), use_cache=False)
    return outputs.logits.squeeze(-1).float()


def _cast_head_inputs(model: torch.nn.Module) -> None:
    """With a quantised base, TRL keeps the trainable weights (LoRA and the score head) in bf16 (QLoRA's advice);
    the LoRA layers cast their inputs, the plain `score` head does not: feed it hidden states in its own dtype."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and "score" in name.split("."):
            module.register_forward_pre_hook(lambda m, inputs: tuple(x.to(m.weight.dtype) for x in inputs))


# ----------------------------------------------------------------------------------------------------------------
# Trainer
# ----------------------------------------------------------------------------------------------------------------
class RewardTrainer(SafeTrainerMixin, TrlRewardTrainer):
    """TRL's `RewardTrainer` for pairs and K-wise rankings, with InstructGPT's grouped batching as an option.

    With our crash safety (`SafeTrainerMixin`): atomic checkpoints, and a NaN/inf loss stops the run naming the step.
    """

    _tag_names = ["trl", "reward-trainer", "rlhf-recipes"]

    def __init__(self, model, args: RewardConfig, train_dataset: Dataset, eval_dataset: Dataset | None = None,
                 processing_class: PreTrainedTokenizerBase | None = None, data_collator=None, **kwargs):
        if processing_class is None:
            raise ValueError("Pass the tokenizer as `processing_class` (from `rlhf_recipes.models.load_tokenizer`).")
        if processing_class.pad_token_id is None or processing_class.pad_token_id == processing_class.eos_token_id:
            raise ValueError("The reward model needs a pad token distinct from EOS: load the tokenizer with "
                             "`rlhf_recipes.models.load_tokenizer`, which adds one.")
        if data_collator is None:
            data_collator = RewardDataCollator(
                pad_token_id=processing_class.pad_token_id, padding_side=processing_class.padding_side,
                pad_to_multiple_of=args.pad_to_multiple_of,
            )
        self._pair_totals: dict[str, torch.Tensor] = {}
        super().__init__(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=processing_class, data_collator=data_collator, **kwargs)
        self._reset_pair_totals()
        if getattr(self.model, "is_loaded_in_4bit", False) or getattr(self.model, "is_loaded_in_8bit", False):
            _cast_head_inputs(self.model)


    def _reset_pair_totals(self, mode: str | None = None) -> None:
        for key in (mode,) if mode else ("train", "eval"):
            self._pair_totals[key] = torch.zeros(3, dtype=torch.float64)  # correct pairs, pairs, sum of margins

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return prepare_reward_dataset(dataset, processing_class, getattr(args, "ranking_batching", "pairs"),
                                      args.max_length, name=dataset_name)

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = [*PAIR_COLUMNS, "margin", GROUP_COLUMN, TIE_COLUMN]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        rewards = sequence_rewards(model, inputs["input_ids"], inputs["attention_mask"])
        group_sizes = inputs.get("group_sizes")
        if group_sizes is None:
            chosen, rejected = torch.chunk(rewards, chunks=2)
            loss = pairwise_loss(chosen, rejected, inputs.get("margin"))
            matrix = torch.stack([chosen, rejected], dim=1)
            mask = torch.ones_like(matrix, dtype=torch.bool)
        else:
            matrix, mask = group_rewards(rewards, group_sizes.tolist())
            tie_groups = inputs.get(TIE_COLUMN)
            loss = grouped_ranking_loss(matrix, mask, tie_groups)
        if self.args.center_rewards_coefficient is not None:
            loss = loss + self.args.center_rewards_coefficient * torch.mean(rewards**2)
        self._record_metrics(mode, inputs, rewards.detach(), matrix.detach(), mask, inputs.get(TIE_COLUMN))
        return (loss, {"rewards": matrix}) if return_outputs else loss

    @torch.no_grad()
    def _record_metrics(self, mode: str, inputs, rewards, matrix, mask, tie_groups=None) -> None:
        if mode == "train":
            tokens = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
            self._total_train_tokens += tokens // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]

        differences, pair_mask = ranking_differences(matrix, mask, tie_groups)
        per_example = torch.stack([
            ((differences > 0) & pair_mask).sum(dim=(-1, -2)).float(),
            pair_mask.sum(dim=(-1, -2)).float(),
            (differences * pair_mask).sum(dim=(-1, -2)),
        ], dim=1)  # one row per batch element, so that gather_for_metrics drops the padding duplicates
        totals = self.accelerator.gather_for_metrics(per_example).sum(0).double().cpu()
        self._pair_totals[mode] = self._pair_totals[mode] + totals

        local = torch.stack([rewards.min(), rewards.max(), rewards.sum(), rewards.new_tensor(rewards.numel())])
        stats = self.accelerator.gather(local.unsqueeze(0))
        self._metrics[mode]["min_reward"].append(stats[:, 0].min().item())
        self._metrics[mode]["max_reward"].append(stats[:, 1].max().item())
        self._metrics[mode]["mean_reward"].append((stats[:, 2].sum() / stats[:, 3].sum()).item())

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        metrics = {key: sum(values) / len(values) for key, values in self._metrics[mode].items() if values}
        correct, pairs, margin_sum = self._pair_totals[mode].tolist()
        if pairs > 0:
            metrics["accuracy"] = correct / pairs
            metrics["margin"] = margin_sum / pairs
        if mode == "eval":
            metrics = {f"eval_{key}": value for key, value in metrics.items()}
        logs.update(metrics)  # `evaluate()` returns this very dict, so it carries eval_accuracy and eval_margin
        Trainer.log(self, logs, start_time)
        self._metrics[mode] = defaultdict(list)
        self._reset_pair_totals(mode)
