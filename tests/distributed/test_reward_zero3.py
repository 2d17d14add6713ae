"""The reward recipe under `accelerate launch` with 2 CPU processes and DeepSpeed ZeRO-3; the saved RM reloads alone.

The first DeepSpeed launch on a machine JIT-builds a communication op (about 2 minutes); later launches reuse it.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch
from conftest import REPO, accelerate_command
from trl import ModelConfig

from rlhf_recipes.config import ScriptArguments
from rlhf_recipes.data import load_stage_dataset
from rlhf_recipes.models import load_model, load_tokenizer, reward_scores
from rlhf_recipes.reward import prepare_reward_dataset
from rlhf_recipes.reward.normalize import load_reference_set, score_sequences, tokenize_reference
from rlhf_recipes.reward.trainer import RewardDataCollator

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

MAX_LENGTH = 128
N_EVAL = 16
N_REFERENCE = 24


@pytest.mark.timeout(900)
def test_reward_recipe_under_deepspeed_zero3_reloads_in_one_process(demo_dir, sft_dir, tmp_path):
    pytest.importorskip("deepspeed")
    out = tmp_path / "reward-zero3"
    command = accelerate_command() + [
        "--config_file", str(REPO / "accelerate_configs/deepspeed_zero3.yaml"), "--num_processes", "2",
        "--mixed_precision", "no", str(REPO / "recipes/reward.py"),
        "--config", str(REPO / "recipes/demo/reward.yaml"), "--model_name_or_path", str(sft_dir),
        "--dataset_name", str(demo_dir / "data/reward"), "--normalization_dataset", str(demo_dir / "data/sft"),
        "--output_dir", str(out), "--max_steps", "3", "--max_train_samples", "32",
        "--max_eval_samples", str(N_EVAL), "--normalization_samples", str(N_REFERENCE),
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16", "--ddp_backend", "gloo",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"),
                                                                              os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=840)
    assert result.returncode == 0, f"accelerate launch failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"

    assert (out / "model.safetensors").is_file()  # ZeRO-3 gathered the shards into one normal checkpoint
    metrics = json.loads((out / "stage_metrics.json").read_text())
    normalization = json.loads((out / "reward_normalization.json").read_text())
    assert normalization["reference_samples"] == N_REFERENCE  # gathered from both processes, no duplicates

    tokenizer = load_tokenizer(str(out))
    model = load_model(ModelConfig(model_name_or_path=str(out), dtype="float32"), tokenizer, kind="reward").eval()
    assert model.reward_bias == pytest.approx(normalization["bias"])

    # The held-out comparisons: the same margin in one process as the 2-process sharded evaluation measured.
    script_args = ScriptArguments(dataset_name=str(demo_dir / "data/reward"), dataset_format="ranking",
                                  max_train_samples=1, max_eval_samples=N_EVAL)
    dataset, _ = load_stage_dataset(script_args, "reward", tokenizer=tokenizer, max_prompt_tokens=MAX_LENGTH // 2)
    pairs = prepare_reward_dataset(dataset["test"], tokenizer, "pairs", MAX_LENGTH)
    margins = score_sequences(model, pairs["chosen_ids"], tokenizer) - score_sequences(model, pairs["rejected_ids"],
                                                                                      tokenizer)
    assert margins.mean().item() == pytest.approx(metrics["eval_margin"], abs=1e-4)
    assert (margins > 0).double().mean().item() == pytest.approx(metrics["eval_accuracy"], abs=1e-9)

    # The reference set: the same raw mean, and with the saved bias it scores 0 on average.
    reference, _ = load_reference_set(str(demo_dir / "data/sft"), samples=N_REFERENCE, tokenizer=tokenizer,
                                      max_prompt_tokens=MAX_LENGTH // 2)
    sequences = tokenize_reference(reference, tokenizer, MAX_LENGTH)
    batch = RewardDataCollator(pad_token_id=tokenizer.pad_token_id)([{"responses_ids": [s]} for s in sequences])
    with torch.no_grad():
        scores = reward_scores(model, batch["input_ids"], batch["attention_mask"]).double()
    assert scores.mean().item() - model.reward_bias == pytest.approx(normalization["raw_mean"], abs=1e-4)
    assert abs(scores.mean().item()) < 1e-4
