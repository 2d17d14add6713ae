"""Every kind of artifact the stages save loads back and computes what the trained model in memory computed.

Full model (SFT), LoRA adapter (with `peft` and with our loader), adapter merged into its base (`merge_adapter`),
reward model with its normalisation bias (full and LoRA), and PPO's policy and `value_model/` (full and LoRA).
"""

from __future__ import annotations

import json

import pytest
import torch
from peft import AutoPeftModelForCausalLM
from stage_runs import ppo_run, run_recording_trainer, sft_args
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
from trl import ModelConfig

from rlhf_recipes.models import (
    REWARD_NORMALIZATION_FILE,
    load_model,
    load_tokenizer,
    read_reward_bias,
    reward_scores,
    write_reward_bias,
)
from rlhf_recipes.ppo.trainer import VALUE_MODEL_DIR, compute_values, position_ids_from

ATOL = 1e-5  # CPU float32; LoRA merging changes the order of additions
TEXTS = ["This film was a delight from start to finish.", "I expected little, and the plot"]


def model_args(path, **kwargs) -> ModelConfig:
    return ModelConfig(model_name_or_path=str(path), dtype="float32", **kwargs)


def batch(tokenizer):
    """Two sequences of different lengths, left-padded: padding must not change anything either."""
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in TEXTS]
    width = max(map(len, ids))
    input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r for r in ids])
    mask = (input_ids != tokenizer.pad_token_id).long()
    return input_ids, mask


@torch.no_grad()
def lm_logits(model, tokenizer) -> torch.Tensor:
    input_ids, mask = batch(tokenizer)
    model.eval()
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids_from(mask)).logits
    return logits[mask.bool()]  # real tokens only


@torch.no_grad()
def greedy(model, tokenizer) -> list[list[int]]:
    input_ids, mask = batch(tokenizer)
    out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=8, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id)
    return out[:, input_ids.shape[1]:].tolist()


@torch.no_grad()
def scores(model, tokenizer) -> torch.Tensor:
    input_ids, mask = batch(tokenizer)
    model.eval()
    return reward_scores(model, input_ids, mask)


@torch.no_grad()
def values(model, tokenizer) -> torch.Tensor:
    input_ids, mask = batch(tokenizer)
    model.eval()
    return compute_values(model, input_ids, mask, position_ids_from(mask))[mask.bool()]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float = ATOL) -> None:
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


# -- SFT: full model, LoRA adapter, merged -----------------------------------------------------------------------
def test_full_sft_model_round_trip(demo_dir, tmp_path):
    out = tmp_path / "sft"
    _, trainer = run_recording_trainer("sft", "SFTTrainer", sft_args(demo_dir, out, "--max_steps", "2",
                                                                     "--save_strategy", "no"))
    tokenizer = load_tokenizer(str(out), padding_side="left")
    assert (out / "model.safetensors").is_file() and not (out / "pytorch_model.bin").exists()
    trained = trainer.model
    expected = lm_logits(trained, tokenizer)
    base = load_model(model_args(demo_dir / "base"), tokenizer)
    assert (lm_logits(base, tokenizer) - expected).abs().max() > 1e-3  # training changed the model

    ours = load_model(model_args(out), tokenizer)
    plain = AutoModelForCausalLM.from_pretrained(out)
    assert_close(lm_logits(ours, tokenizer), expected)
    assert_close(lm_logits(plain, tokenizer), expected)
    assert greedy(ours, tokenizer) == greedy(trained, tokenizer)
    assert plain.config.pad_token_id == tokenizer.pad_token_id != tokenizer.eos_token_id


def test_lora_sft_adapter_and_merged_round_trip(demo_dir, tmp_path):
    out = tmp_path / "sft_lora"
    _, trainer = run_recording_trainer("sft", "SFTTrainer", sft_args(
        demo_dir, out, "--max_steps", "2", "--save_strategy", "no", "--learning_rate", "1e-2", "--use_peft", "true",
        "--lora_r", "4", "--lora_alpha", "8", "--lora_target_modules", "c_attn", "c_proj", "--merge_adapter", "true"))
    tokenizer = load_tokenizer(str(out), padding_side="left")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in out.iterdir()}
    assert not (out / "model.safetensors").exists()  # the adapter, not a full copy
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(demo_dir / "base")
    assert (out / "merged" / "model.safetensors").is_file() and (out / "merged" / "tokenizer.json").is_file()

    trained = trainer.model
    expected = lm_logits(trained, tokenizer)
    with trained.disable_adapter():
        assert (lm_logits(trained, tokenizer) - expected).abs().max() > 1e-3  # the adapter does something

    with_peft = AutoPeftModelForCausalLM.from_pretrained(out)
    assert_close(lm_logits(with_peft, tokenizer), expected)
    ours = load_model(model_args(out), tokenizer)  # merged into its base on load
    assert not hasattr(ours, "peft_config")
    assert_close(lm_logits(ours, tokenizer), expected)
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    assert_close(lm_logits(merged, tokenizer), expected)
    assert greedy(merged, tokenizer) == greedy(trained, tokenizer)


# -- Reward model with its normalisation ---------------------------------------------------------------------------
def test_reward_model_round_trip_applies_the_bias(sft_dir, tmp_path):
    tokenizer = load_tokenizer(str(sft_dir), padding_side="left")
    torch.manual_seed(0)
    rm = load_model(model_args(sft_dir), tokenizer, kind="reward")
    raw = scores(rm, tokenizer)
    assert rm.reward_bias == 0.0
    out = tmp_path / "rm"
    rm.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_reward_bias(out, -1.25, raw_mean=1.25, samples=48)

    loaded = load_model(model_args(out), tokenizer, kind="reward")
    assert read_reward_bias(str(out)) == loaded.reward_bias == -1.25
    assert_close(scores(loaded, tokenizer), raw - 1.25)
    plain = AutoModelForSequenceClassification.from_pretrained(out)  # transformers alone: the raw score
    input_ids, mask = batch(tokenizer)
    with torch.no_grad():
        assert_close(plain(input_ids=input_ids, attention_mask=mask,
                           position_ids=position_ids_from(mask)).logits.squeeze(-1), raw)
    value = load_model(model_args(out), tokenizer, kind="value")  # a value model started from it: same head
    assert_close(values(value, tokenizer), values(rm, tokenizer))


def test_lora_reward_adapter_round_trip_applies_the_bias(sft_dir, tmp_path):
    tokenizer = load_tokenizer(str(sft_dir), padding_side="left")
    torch.manual_seed(0)
    rm = load_model(model_args(sft_dir, use_peft=True, lora_r=4, lora_alpha=8, lora_target_modules=["c_attn"]),
                    tokenizer, kind="reward")
    with torch.no_grad():  # stand-in for training: move the adapter and the (fully trained) head
        for param in rm.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))
    expected = scores(rm, tokenizer)
    out = tmp_path / "rm_lora"
    rm.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_reward_bias(out, 0.5)
    assert json.loads((out / "adapter_config.json").read_text())["task_type"] == "SEQ_CLS"

    loaded = load_model(model_args(out), tokenizer, kind="reward")  # merged into the SFT model on load
    assert loaded.reward_bias == 0.5 and not hasattr(loaded, "peft_config")
    assert_close(scores(loaded, tokenizer), expected + 0.5)


# -- PPO: policy and value model -----------------------------------------------------------------------------------
def test_ppo_policy_and_value_model_round_trip(demo_dir, sft_dir, tmp_path_factory):
    run = ppo_run(demo_dir, sft_dir, tmp_path_factory.mktemp("ppo_runs"))
    out, trained = run.output_dir, run.trainer.accelerator.unwrap_model(run.trainer.model)
    tokenizer = load_tokenizer(str(out), padding_side="left")
    assert {p.name for p in (out / VALUE_MODEL_DIR).iterdir()} == {"config.json", "model.safetensors"}

    policy = load_model(model_args(out), tokenizer)
    assert_close(lm_logits(policy, tokenizer), lm_logits(trained.policy, tokenizer))
    value = load_model(model_args(out / VALUE_MODEL_DIR), tokenizer, kind="value")
    expected = values(trained.value_model, tokenizer)
    assert_close(values(value, tokenizer), expected)
    plain = AutoModelForSequenceClassification.from_pretrained(out / VALUE_MODEL_DIR)
    assert_close(values(plain, tokenizer), expected)
    # The saved value model is the trained one, not the reward model it started from.
    reward_model = load_model(model_args(run.trainer.args.reward_model_path), tokenizer, kind="value")
    assert (values(reward_model, tokenizer) - expected).abs().max() > 1e-6


def test_lora_ppo_adapters_and_merged_policy_round_trip(demo_dir, sft_dir, tmp_path_factory):
    run = ppo_run(demo_dir, sft_dir, tmp_path_factory.mktemp("ppo_lora_runs"), "--use_peft", "true",
                  "--lora_r", "4", "--lora_alpha", "8", "--lora_target_modules", "c_attn", "--learning_rate",
                  "1e-2", "--merge_adapter", "true")
    out, trained = run.output_dir, run.trainer.accelerator.unwrap_model(run.trainer.model)
    tokenizer = load_tokenizer(str(out), padding_side="left")
    for folder in (out, out / VALUE_MODEL_DIR):
        assert (folder / "adapter_model.safetensors").is_file() and not (folder / "model.safetensors").exists()
    assert not (out / VALUE_MODEL_DIR / REWARD_NORMALIZATION_FILE).exists()

    expected = lm_logits(trained.policy, tokenizer)
    assert_close(lm_logits(AutoPeftModelForCausalLM.from_pretrained(out), tokenizer), expected)
    assert_close(lm_logits(load_model(model_args(out), tokenizer), tokenizer), expected)
    assert_close(lm_logits(AutoModelForCausalLM.from_pretrained(out / "merged"), tokenizer), expected)
    value = load_model(model_args(out / VALUE_MODEL_DIR), tokenizer, kind="value")
    assert_close(values(value, tokenizer), values(trained.value_model, tokenizer))


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(1234)
