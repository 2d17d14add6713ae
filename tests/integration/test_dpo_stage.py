"""The DPO stage: TRL's DPOTrainer behind our loader, tokenisation and outputs, a few steps on the test demo."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import REPO
from safetensors.torch import load_file
from stage_runs import run_recording_trainer

from rlhf_recipes.checkpoints import checkpoint_problems
from rlhf_recipes.models import load_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def dpo_args(demo_dir, sft_dir, out, *extra: str) -> list[str]:
    """The demo DPO recipe on the test demo's rankings (8 train, 4 held-out), from the test SFT model."""
    return ["--config", str(REPO / "recipes/demo/dpo.yaml"), "--model_name_or_path", str(sft_dir),
            "--dataset_name", str(demo_dir / "data/reward"), "--output_dir", str(out), "--max_train_samples", "16",
            "--max_eval_samples", "4", "--per_device_train_batch_size", "8", "--logging_steps", "1", *extra]


@pytest.mark.parametrize("loss_type, beta, start_loss, lr", [
    ("sigmoid", 0.1, math.log(2), "1e-3"),  # -log sigmoid(beta * 0): policy = reference at the start
    ("ipo", 0.5, (1 / (2 * 0.5)) ** 2, "1e-4"),  # (0 - 1 / (2 tau))^2, Azar et al. 2023 eq. 17; a squared loss
])
def test_dpo_learns_the_rankings_and_saves_like_every_stage(demo_dir, sft_dir, tmp_path, loss_type, beta, start_loss,
                                                            lr):
    out = tmp_path / loss_type
    metrics, trainer = run_recording_trainer("dpo", "DPOTrainer", dpo_args(
        demo_dir, sft_dir, out, "--loss_type", loss_type, "--beta", str(beta), "--ranking_pairs", "all",
        "--max_steps", "6", "--learning_rate", lr, "--save_strategy", "steps", "--save_steps", "3"))
    # The loss TRL computed is the named loss of the log-ratios: both are 0 before training.
    assert metrics["eval_loss_before"] == pytest.approx(start_loss, rel=1e-4)
    assert metrics["eval_loss"] < metrics["eval_loss_before"]  # it moved the right way on held-out pairs
    assert metrics["eval_margin"] > 0
    assert trainer.ref_model is not None  # a full fine-tune keeps a frozen copy of the SFT model

    before, after = load_file(sft_dir / "model.safetensors"), load_file(out / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before if k in after)
    report = json.loads((out / "data_report.json").read_text())
    assert [r["pairs"] for r in report] == [16 * 6, 4 * 6]  # every C(4,2) pair of each ranking
    assert json.loads((out / "stage_metrics.json").read_text())["stage"] == "dpo"
    assert load_tokenizer(str(out)).pad_token == "<|pad|>"
    card = (out / "README.md").read_text()
    assert f'"beta": {beta}' in card and "- dpo" in card
    assert checkpoint_problems(out / "checkpoint-6") == []  # atomic, manifested checkpoints


def test_lora_dpo_uses_the_disabled_adapter_as_reference(demo_dir, sft_dir, tmp_path):
    out = tmp_path / "lora"
    metrics, trainer = run_recording_trainer("dpo", "DPOTrainer", dpo_args(
        demo_dir, sft_dir, out, "--use_peft", "true", "--lora_r", "8", "--lora_alpha", "16",
        "--lora_target_modules", "c_attn", "--max_steps", "4", "--learning_rate", "1e-2", "--save_strategy", "no"))
    # One copy of the weights: no reference model, no reference adapter; the base stays the SFT model.
    assert trainer.ref_model is None
    model = trainer.accelerator.unwrap_model(trainer.model)
    assert list(model.peft_config) == ["default"]
    assert metrics["eval_loss_before"] == pytest.approx(math.log(2), rel=1e-4)
    assert metrics["eval_loss"] < metrics["eval_loss_before"]

    batch = trainer.data_collator([trainer.eval_dataset[i] for i in range(2)])
    batch = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "completion_mask")}
    ref_chosen, _ = trainer.compute_ref_log_probs(trainer.model, batch)
    sft = type(model.get_base_model()).from_pretrained(sft_dir).eval()
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    with torch.no_grad():
        logits = sft(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    logps = torch.log_softmax(logits.float(), -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    expected = (logps * (labels[:, 1:] != -100)).sum(-1)
    assert ref_chosen.tolist() == pytest.approx(expected[:2].tolist(), abs=1e-3)  # the reference is the SFT model
    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
