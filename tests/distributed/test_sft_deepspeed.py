"""The SFT recipe under `accelerate launch` with 2 CPU processes and DeepSpeed ZeRO-2 / ZeRO-3 (gloo).

The saved folder must load in a single process with plain `from_pretrained`: for ZeRO-3 that means the sharded
weights were gathered on save (`zero3_save_16bit_model`), not written as empty placeholders.
The first DeepSpeed launch on a machine JIT-builds a communication op (about 2 minutes); later launches reuse it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess

import pytest
import torch
import yaml
from conftest import REPO, accelerate_command
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

LAUNCH_TIMEOUT_S = 600


def test_zero3_config_gathers_the_weights_on_save():
    config = yaml.safe_load((REPO / "accelerate_configs/deepspeed_zero3.yaml").read_text())
    assert config["deepspeed_config"]["zero_stage"] == 3
    # accelerate turns this into DeepSpeed's stage3_gather_16bit_weights_on_model_save
    assert config["deepspeed_config"]["zero3_save_16bit_model"] is True


@pytest.mark.timeout(LAUNCH_TIMEOUT_S + 120)
@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_sft_under_deepspeed_saves_a_model_that_loads_in_one_process(zero, demo_dir, tmp_path):
    pytest.importorskip("deepspeed")
    out = tmp_path / f"sft-{zero}"
    command = accelerate_command() + [
        "--config_file", str(REPO / f"accelerate_configs/deepspeed_{zero}.yaml"), "--num_processes", "2",
        "--mixed_precision", "no", str(REPO / "recipes/sft.py"),
        "--config", str(REPO / "recipes/demo/sft.yaml"), "--model_name_or_path", str(demo_dir / "base"),
        "--dataset_name", str(demo_dir / "data/sft"), "--output_dir", str(out),
        "--ddp_backend", "gloo", "--max_steps", "3", "--save_strategy", "no",
        "--max_train_samples", "128", "--max_eval_samples", "32",
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"),
                                                                              os.environ.get("PYTHONPATH")]))}
    try:
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        stderr = err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else (err.stderr or "")
        pytest.fail(f"accelerate launch ({zero}) ran past {LAUNCH_TIMEOUT_S} s; stderr tail:\n{stderr[-6000:]}")
    assert result.returncode == 0, (
        f"accelerate launch ({zero}) failed with rc {result.returncode}; stderr tail:\n{result.stderr[-6000:]}"
    )

    # One ordinary safetensors checkpoint (no DeepSpeed shards to convert).
    assert (out / "model.safetensors").is_file()
    assert not list(out.glob("global_step*")) and not (out / "model.safetensors.index.json").exists()
    metrics = json.loads((out / "stage_metrics.json").read_text())
    assert all(math.isfinite(metrics[k]) for k in ("eval_loss_before", "train_loss", "eval_loss_after"))

    # Real weights: every base tensor is there with its full shape, and training moved them.
    base = load_file(demo_dir / "base/model.safetensors")
    tuned = load_file(out / "model.safetensors")
    assert set(base) <= set(tuned)
    for name, tensor in base.items():
        assert tuned[name].shape == tensor.shape, name
        assert tuned[name].numel() > 0 and torch.isfinite(tuned[name]).all(), name
    changed = [name for name in base if not torch.equal(tuned[name], base[name])]
    assert len(changed) >= 0.9 * len(base), f"only {len(changed)} of {len(base)} tensors changed"

    # Loads alone, with plain transformers, and computes.
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    loaded = model.state_dict()
    assert all(torch.equal(loaded[name], tuned[name]) for name in base)
    ids = tokenizer(["The new thriller by Anna Lee was"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()
