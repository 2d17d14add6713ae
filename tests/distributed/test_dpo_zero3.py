"""The DPO recipe under `accelerate launch` with 2 CPU processes and DeepSpeed ZeRO-3 (the policy and the frozen
reference both sharded); the saved policy reloads in one process and matches the 2-process held-out evaluation.

The first DeepSpeed launch on a machine JIT-builds a communication op (about 2 minutes); later launches reuse it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, accelerate_command
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from rlhf_recipes.config import ScriptArguments
from rlhf_recipes.data import load_stage_dataset
from rlhf_recipes.dpo import encode_preference
from rlhf_recipes.models import load_tokenizer

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

LAUNCH_TIMEOUT_S = 600
N_EVAL = 4  # rankings: 4 x 3 best-vs-rest pairs
BETA = 0.1


def sequence_logp(model, prompt_ids: list[int], response_ids: list[int]) -> float:
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1: -1].float()
    return F.log_softmax(logits, -1).gather(-1, ids[0, len(prompt_ids):, None]).sum().item()


@pytest.mark.timeout(LAUNCH_TIMEOUT_S + 120)
def test_dpo_under_deepspeed_zero3_saves_a_policy_whose_held_out_loss_matches(demo_dir, sft_dir, tmp_path):
    pytest.importorskip("deepspeed")
    out = tmp_path / "dpo-zero3"
    command = accelerate_command() + [
        "--config_file", str(REPO / "accelerate_configs/deepspeed_zero3.yaml"), "--num_processes", "2",
        "--mixed_precision", "no", str(REPO / "recipes/dpo.py"),
        "--config", str(REPO / "recipes/demo/dpo.yaml"), "--model_name_or_path", str(sft_dir),
        "--dataset_name", str(demo_dir / "data/reward"), "--output_dir", str(out), "--ddp_backend", "gloo",
        "--max_steps", "3", "--save_strategy", "no", "--max_train_samples", "32", "--max_eval_samples", str(N_EVAL),
        "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "6", "--learning_rate", "1e-3",
        "--beta", str(BETA), "--ranking_pairs", "best_vs_rest",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"),
                                                                              os.environ.get("PYTHONPATH")]))}
    try:
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        stderr = err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else (err.stderr or "")
        pytest.fail(f"accelerate launch ran past {LAUNCH_TIMEOUT_S} s; stderr tail:\n{stderr[-6000:]}")
    assert result.returncode == 0, f"accelerate launch failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"

    # One ordinary safetensors checkpoint with real (gathered) weights that moved away from the SFT policy.
    assert (out / "model.safetensors").is_file() and not list(out.glob("global_step*"))
    sft, tuned = load_file(sft_dir / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(tuned[k].shape == v.shape for k, v in sft.items() if k in tuned)
    assert any(not torch.equal(sft[k], tuned[k]) for k in sft if k in tuned)
    metrics = json.loads((out / "stage_metrics.json").read_text())
    assert metrics["eval_loss_before"] == pytest.approx(math.log(2), rel=1e-4)  # policy = reference at the start

    # The held-out DPO loss of the saved policy against the SFT reference, in one process, is what the 2-process
    # sharded evaluation logged after training.
    tokenizer = load_tokenizer(str(out))
    policy = AutoModelForCausalLM.from_pretrained(out).eval()
    reference = AutoModelForCausalLM.from_pretrained(sft_dir).eval()
    script_args = ScriptArguments(dataset_name=str(demo_dir / "data/reward"), dataset_format="ranking",
                                  max_train_samples=1, max_eval_samples=N_EVAL)
    dataset, _ = load_stage_dataset(script_args, "dpo", tokenizer=tokenizer, max_prompt_tokens=64,
                                    pair_selection="best_vs_rest")
    losses = []
    for row in dataset["test"]:
        ids = encode_preference(tokenizer, row["prompt"], row["chosen"], row["rejected"])
        margin = sum(sign * (sequence_logp(policy, ids["prompt_ids"], ids[f"{side}_ids"])
                             - sequence_logp(reference, ids["prompt_ids"], ids[f"{side}_ids"]))
                     for sign, side in ((1, "chosen"), (-1, "rejected")))
        losses.append(-F.logsigmoid(torch.tensor(BETA * margin)).item())
    assert len(losses) == 3 * N_EVAL
    assert sum(losses) / len(losses) == pytest.approx(metrics["eval_loss"], abs=1e-4)
