"""Ties from the labeling app reach the reward model as 'no order': the row format accepts and checks a `ties` column,
pairs mode leaves tied pairs out, grouped mode masks them, by hand."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset
from gpt2_like import gpt2_like_tokenizer

from rlhf_recipes.data import DataError
from rlhf_recipes.data.formats import format_split
from rlhf_recipes.reward.losses import expand_ranking, grouped_ranking_loss, pairwise_loss, ranking_differences
from rlhf_recipes.reward.trainer import TIE_COLUMN, RewardDataCollator, prepare_reward_dataset


def log1p_exp(x: float) -> float:  # -log sigmoid(-x)
    return math.log1p(math.exp(x))


def rows(ties_of_second):
    return Dataset.from_list([
        {"prompt": "Q1", "responses": ["a", "b", "c"], "ties": [[1, 2]]},
        {"prompt": "Q2", "responses": ["d", "e", "f", "g"], "ties": ties_of_second},
    ])


def test_the_reward_format_passes_valid_ties_on_and_refuses_bad_ones():
    formatted, _ = format_split(rows([]), stage="reward", fmt="ranking", source="x.jsonl", split="train")
    assert formatted["ties"] == [[[1, 2]], []]
    formatted, report = format_split(rows([[0, 2]]), stage="reward", fmt="ranking", source="x.jsonl",
                                     split="train")
    assert len(formatted) == 1 and "adjacent positions only" in str(report.dropped)
    with pytest.raises(DataError, match=r"x.jsonl \[train\], row 2: tie group \[3, 4\] names a position outside"):
        format_split(rows([[3, 4]]), stage="reward", fmt="ranking", source="x.jsonl", split="train",
                     invalid_rows="error")
    plain = Dataset.from_list([{"prompt": "Q", "responses": ["a", "b"]}])  # no ties column: rows as before
    assert format_split(plain, stage="reward", fmt="ranking", source="y", split="train")[0].column_names == \
        ["prompt", "responses"]


def test_pairs_mode_leaves_tied_pairs_out():
    assert expand_ranking(["a", "b", "c"], [[1, 2]]) == [("a", "b"), ("a", "c")]
    formatted, _ = format_split(rows([[0, 1], [2, 3]]), stage="reward", fmt="ranking", source="x", split="train")
    pairs = prepare_reward_dataset(formatted, gpt2_like_tokenizer(), "pairs", max_length=32)
    # C(3,2) - 1 tied pair, C(4,2) - 2 tied pairs
    assert len(pairs) == 2 + 4


def test_grouped_mode_masks_tied_pairs_by_hand():
    tokenizer = gpt2_like_tokenizer()
    formatted, _ = format_split(rows([]), stage="reward", fmt="ranking", source="x", split="train")
    grouped = prepare_reward_dataset(formatted, tokenizer, "grouped", max_length=32)
    assert grouped[TIE_COLUMN] == [[-1, 0, 0], [-1, -1, -1, -1]]
    batch = RewardDataCollator(pad_token_id=0)([grouped[0], grouped[1]])
    assert batch[TIE_COLUMN].tolist() == [[-1, 0, 0, -1], [-1, -1, -1, -1]]
    rewards = torch.tensor([[2.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, False], [True] * 4])
    _, pair_mask = ranking_differences(rewards, mask, batch[TIE_COLUMN])
    assert pair_mask[0].nonzero().tolist() == [[0, 1], [0, 2]] and int(pair_mask[1].sum()) == 6
    # first ranking: pairs (0,1) d=2 and (0,2) d=1 only; the swapped tied pair (1,2) d=-1 costs nothing
    first = (log1p_exp(-2.0) + log1p_exp(-1.0)) / 2
    loss = grouped_ranking_loss(rewards, mask, batch[TIE_COLUMN])
    assert loss.item() == pytest.approx((first + math.log(2.0)) / 2, rel=1e-6)
    # the same number as pairs mode's pairwise loss over the two untied pairs
    assert pairwise_loss(torch.tensor([2.0, 2.0]), torch.tensor([0.0, 1.0])).item() == pytest.approx(first, rel=1e-6)


def test_the_reward_trainer_gives_the_same_loss_in_both_batchings_with_ties_left_out(tmp_path):
    """Through RewardTrainer itself: a ranking of 4 with one tie gives C(4,2) - 1 = 5 pairs, and the grouped loss
    over its untied pairs equals the pairs-mode loss."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from rlhf_recipes.reward import RewardConfig, RewardTrainer

    tokenizer = gpt2_like_tokenizer()
    tokenizer.add_special_tokens({"pad_token": "<pad>"})  # what models.load_tokenizer does
    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=16,
                                                     n_layer=1, n_head=2, num_labels=1,
                                                     pad_token_id=tokenizer.pad_token_id)).eval()
    ranking = Dataset.from_list([{"prompt": "This western", "responses": [" great.", " good.", " fine.", " bad."],
                                  "ties": [[1, 2]]}])
    losses = {}
    for mode in ("pairs", "grouped"):
        args = RewardConfig(output_dir=str(tmp_path / mode), ranking_batching=mode, bf16=False,
                            activation_checkpointing=False, report_to="none", max_length=32,
                            per_device_eval_batch_size=16)
        trainer = RewardTrainer(model=model, args=args, train_dataset=ranking, eval_dataset=ranking,
                                processing_class=tokenizer)
        examples = list(trainer.eval_dataset)
        assert len(examples) == (5 if mode == "pairs" else 1)
        with torch.no_grad():
            losses[mode] = trainer.compute_loss(model, dict(trainer.data_collator(examples))).item()
    assert losses["grouped"] == pytest.approx(losses["pairs"], abs=1e-5)
