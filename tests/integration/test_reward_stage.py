"""Stage 2 end to end on the demo and the shared HH sample: a few steps each, so the file stays under 90 s."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_recipe
from datasets import Dataset
from safetensors.torch import load_file
from trl import ModelConfig

from rlhf_recipes.config import ScriptArguments
from rlhf_recipes.data import load_stage_dataset
from rlhf_recipes.models import load_model, load_tokenizer, reward_scores
from rlhf_recipes.reward import (
    RewardConfig,
    RewardTrainer,
    encode_response,
    last_token_index,
    prepare_reward_dataset,
)
from rlhf_recipes.reward.normalize import load_reference_set, score_sequences, tokenize_reference
from rlhf_recipes.reward.trainer import RewardDataCollator, position_ids_from_mask

DEMO_YAML = str(REPO / "recipes/demo/reward.yaml")
MAX_LENGTH = 128
N_REFERENCE = 48
N_EVAL = 24


def demo_args(demo_dir: Path, sft_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["--config", DEMO_YAML, "--model_name_or_path", str(sft_dir),
            "--dataset_name", str(demo_dir / "data/reward"), "--normalization_dataset", str(demo_dir / "data/sft"),
            "--output_dir", str(out), "--max_train_samples", "48", "--max_eval_samples", str(N_EVAL),
            "--normalization_samples", str(N_REFERENCE), "--per_device_train_batch_size", "16",
            "--logging_steps", "1", *extra]


def scores_with_bias(model, tokenizer, sequences: list[list[int]], batch_size: int = 32) -> torch.Tensor:
    """What PPO and evaluation see: `models.reward_scores` (normalisation bias included)."""
    collator = RewardDataCollator(pad_token_id=tokenizer.pad_token_id, padding_side=tokenizer.padding_side)
    out = []
    with torch.no_grad():
        for start in range(0, len(sequences), batch_size):
            batch = collator([{"responses_ids": [ids]} for ids in sequences[start:start + batch_size]])
            out.append(reward_scores(model, batch["input_ids"], batch["attention_mask"]))
    return torch.cat(out).double()


def held_out_margin(model, tokenizer, demo_dir: Path) -> float:
    """Mean r_w - r_l over the same held-out pairs the recipe evaluated on, scored by `model`."""
    script_args = ScriptArguments(dataset_name=str(demo_dir / "data/reward"), dataset_format="ranking",
                                  max_train_samples=1, max_eval_samples=N_EVAL)
    dataset, _ = load_stage_dataset(script_args, "reward", tokenizer=tokenizer, max_prompt_tokens=MAX_LENGTH // 2)
    pairs = prepare_reward_dataset(dataset["test"], tokenizer, "pairs", MAX_LENGTH)
    chosen = score_sequences(model, pairs["chosen_ids"], tokenizer)
    rejected = score_sequences(model, pairs["rejected_ids"], tokenizer)
    return float((chosen - rejected).mean())


def reference_sequences(tokenizer, demo_dir: Path) -> list[list[int]]:
    reference, _ = load_reference_set(str(demo_dir / "data/sft"), samples=N_REFERENCE, tokenizer=tokenizer,
                                      max_prompt_tokens=MAX_LENGTH // 2)
    return tokenize_reference(reference, tokenizer, MAX_LENGTH)


@pytest.fixture(scope="module")
def demo_rm(demo_dir, sft_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("reward")
    metrics = run_recipe("reward", demo_args(demo_dir, sft_dir, out, "--ranking_batching", "pairs", "--max_steps", "6",
                                                  "--learning_rate", "2e-3"))
    return out, metrics


def test_demo_reward_trains_evaluates_and_saves(demo_rm, sft_dir):
    out, metrics = demo_rm
    for name in ("model.safetensors", "config.json", "tokenizer.json", "reward_normalization.json",
                 "stage_metrics.json", "data_report.json", "README.md"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "stage_metrics.json").read_text())
    assert saved["stage"] == "reward"
    assert 0.0 <= saved["eval_accuracy"] <= 1.0 and math.isfinite(saved["eval_margin"])
    assert saved["eval_loss"] < saved["eval_loss_before"]  # six steps already help on held-out comparisons
    assert saved["eval_margin"] > saved["eval_margin_before"]
    weights = load_file(out / "model.safetensors")
    sft_weights = load_file(sft_dir / "model.safetensors")
    name = "transformer.h.0.attn.c_attn.weight"
    assert not torch.equal(weights[name], sft_weights[name])  # the whole network trained, not just the head
    assert weights["score.weight"].shape[0] == 1 and "lm_head.weight" not in weights
    report = json.loads((out / "data_report.json").read_text())
    assert report[0]["stage"] == "reward" and report[0]["kept"] == 48
    assert "normalisation" in report[-1]["split"]


def test_normalisation_makes_the_reference_set_average_zero(demo_rm, demo_dir):
    out, metrics = demo_rm
    normalization = json.loads((out / "reward_normalization.json").read_text())
    assert normalization["reference_samples"] == N_REFERENCE
    tokenizer = load_tokenizer(str(out))
    model = load_model(ModelConfig(model_name_or_path=str(out), dtype="float32"), tokenizer, kind="reward").eval()
    assert model.reward_bias == pytest.approx(normalization["bias"]) and model.reward_bias != 0.0
    scores = scores_with_bias(model, tokenizer, reference_sequences(tokenizer, demo_dir))
    assert abs(scores.mean().item()) < 1e-4
    assert scores.std().item() > 1e-3  # zero mean, not zero scores
    assert normalization["raw_mean"] == pytest.approx(-normalization["bias"])


def test_score_is_read_at_eos_whatever_the_padding_side(demo_rm):
    out, _ = demo_rm
    tokenizer = load_tokenizer(str(out))
    model = load_model(ModelConfig(model_name_or_path=str(out), dtype="float32"), tokenizer, kind="reward").eval()
    texts = [("A quiet western.", " It was good."), ("Review:", " The plot was dull and far too long."), ("", " Hm.")]
    sequences = [encode_response(tokenizer, p, r, MAX_LENGTH)[0] for p, r in texts]
    alone = torch.stack([scores_with_bias(model, tokenizer, [ids]) for ids in sequences]).squeeze(-1)
    results = {}
    for side in ("right", "left"):
        batch = RewardDataCollator(pad_token_id=tokenizer.pad_token_id, padding_side=side)(
            [{"chosen_ids": sequences[0], "rejected_ids": sequences[1]}, {"chosen_ids": sequences[2],
                                                                           "rejected_ids": sequences[2]}])
        ids, mask = batch["input_ids"], batch["attention_mask"]
        assert (ids == tokenizer.pad_token_id).any()  # the batch really is padded
        index = last_token_index(mask)
        rows = torch.arange(ids.shape[0])
        assert (ids[rows, index] == tokenizer.eos_token_id).all()  # the last real token is the EOS
        with torch.no_grad():
            outputs = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                            output_hidden_states=True)
        # The classifier's score is its head applied at exactly that EOS position, never at a pad.
        at_eos = model.score(outputs.hidden_states[-1][rows, index]).squeeze(-1)
        torch.testing.assert_close(outputs.logits.squeeze(-1), at_eos)
        results[side] = reward_scores(model, ids, mask).double()
    torch.testing.assert_close(results["left"], results["right"], atol=1e-5, rtol=0)
    # The collator lays out chosen then rejected: sequences 0, 2 then 1, 2; each scores as it does alone.
    torch.testing.assert_close(results["right"], alone[[0, 2, 1, 2]], atol=1e-5, rtol=0)


def test_ranking_pairs_vs_grouped(sft_dir, tmp_path):
    """A ranking of K: C(K,2) pairs (2 C(K,2) sequences) vs one element of K sequences; the same loss either way."""
    tokenizer = load_tokenizer(str(sft_dir))
    model = load_model(ModelConfig(model_name_or_path=str(sft_dir), dtype="float32"), tokenizer, kind="reward")
    responses = [" A brilliant film.", " It was good.", " The plot was dull.", " Awful awful awful.", " No."]
    ranking = Dataset.from_list([{"prompt": "This western", "responses": responses}])
    k = len(responses)
    sequences_seen = []
    model.register_forward_hook(lambda module, args, kwargs, output: sequences_seen.append(
        kwargs["input_ids"].shape[0]), with_kwargs=True)
    losses = {}
    for mode in ("pairs", "grouped"):
        args = RewardConfig(output_dir=str(tmp_path / mode), ranking_batching=mode, bf16=False,
                            activation_checkpointing=False, report_to="none", max_length=MAX_LENGTH,
                            per_device_eval_batch_size=64)
        trainer = RewardTrainer(model=model, args=args, train_dataset=ranking, eval_dataset=ranking,
                                processing_class=tokenizer)
        examples = list(trainer.eval_dataset)
        assert len(examples) == (math.comb(k, 2) if mode == "pairs" else 1)
        batch = trainer.data_collator(examples)
        sequences_seen.clear()
        model.eval()
        with torch.no_grad():
            losses[mode] = trainer.compute_loss(model, dict(batch)).item()
        assert sequences_seen == [2 * math.comb(k, 2) if mode == "pairs" else k]
        metrics = trainer.evaluate()
        assert {"eval_accuracy", "eval_margin", "eval_loss"} <= set(metrics)
        assert metrics["eval_loss"] == pytest.approx(losses[mode], abs=1e-5)
        if mode == "grouped":
            assert batch["group_sizes"].tolist() == [k]
    assert losses["grouped"] == pytest.approx(losses["pairs"], abs=1e-5)


def test_lora_grouped_reward_model_saves_and_reloads_with_identical_scores(demo_dir, sft_dir, tmp_path):
    out = tmp_path / "lora"
    metrics = run_recipe("reward", demo_args(demo_dir, sft_dir, out, "--max_steps", "3", "--ranking_batching",
                                             "grouped", "--per_device_train_batch_size", "4", "--use_peft", "true",
                                             "--lora_r", "4", "--lora_alpha", "8", "--lora_target_modules", "c_attn", "c_proj",
                                             "--learning_rate", "5e-3"))
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    adapter = load_file(out / "adapter_model.safetensors")
    assert any("score" in name for name in adapter)  # the head is trained in full and saved with the adapter
    assert json.loads((out / "adapter_config.json").read_text())["task_type"] == "SEQ_CLS"
    assert metrics["eval_accuracy"] >= 0.0 and "eval_margin" in metrics  # evaluate() reports them for grouped

    tokenizer = load_tokenizer(str(out))
    model = load_model(ModelConfig(model_name_or_path=str(out), dtype="float32"), tokenizer, kind="reward").eval()
    # The reloaded RM scores the held-out pairs and the reference set exactly like the trainer's model did.
    assert held_out_margin(model, tokenizer, demo_dir) == pytest.approx(metrics["eval_margin"], abs=1e-5)
    scores = scores_with_bias(model, tokenizer, reference_sequences(tokenizer, demo_dir))
    assert scores.mean().item() - model.reward_bias == pytest.approx(metrics["reference_raw_mean"], abs=1e-5)
    assert abs(scores.mean().item()) < 1e-4


def test_hh_sample_trains_and_reports(hh_sample, sft_dir, tmp_path):
    out = tmp_path / "hh"
    metrics = run_recipe("reward", [
        "--config", DEMO_YAML, "--model_name_or_path", str(sft_dir), "--dataset_name", str(hh_sample),
        "--dataset_format", "hh", "--output_dir", str(out), "--normalization_dataset", "",
        "--normalization_samples", "16", "--max_steps", "3", "--per_device_train_batch_size", "4",
        "--logging_steps", "1"])
    assert math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["reward_bias"])
    report = json.loads((out / "data_report.json").read_text())[0]
    assert report["rows_read"] == 400 and report["kept"] == 400 and report["dropped"] == {}
    assert report["noted"]["empty preferred response"] == [87]  # kept and counted, not dropped
    assert report["truncated_prompts"] >= 0


def test_qlora_reward_model_trains_on_a_4bit_base(sft_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    tokenizer = load_tokenizer(str(sft_dir))
    model_args = ModelConfig(model_name_or_path=str(sft_dir), dtype="float32", load_in_4bit=True, use_peft=True,
                             lora_r=4, lora_alpha=8, lora_target_modules=["c_attn", "c_proj"])
    model = load_model(model_args, tokenizer, kind="reward")
    assert model.is_loaded_in_4bit
    ranking = Dataset.from_list([{"prompt": "This western", "responses": [" A brilliant film.", " It was dull."]}] * 8)
    args = RewardConfig(output_dir=str(tmp_path), bf16=False, activation_checkpointing=False, report_to="none",
                        max_length=MAX_LENGTH, max_steps=2, per_device_train_batch_size=4, learning_rate=1e-2,
                        ranking_batching="grouped", save_strategy="no", logging_steps=1)
    trainer = RewardTrainer(model=model, args=args, train_dataset=ranking, processing_class=tokenizer)
    head = next(p for n, p in model.named_parameters() if "score" in n and p.requires_grad)
    before = head.detach().clone()
    trainer.train()
    assert not torch.equal(before, head.detach())  # the bf16 score head trains on the float32 4-bit hidden states
    assert all(math.isfinite(logs["loss"]) for logs in trainer.state.log_history if "loss" in logs)
