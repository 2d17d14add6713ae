"""The PPO recipe under `accelerate launch` with 2 CPU processes (gloo) and DeepSpeed ZeRO-2 and ZeRO-3.

Each launch runs 3 updates of 16 episodes (2 processes x 4 prompts x 2 minibatches). The saved policy must load
alone with `from_pretrained` and give finite logits; ZeRO-3 (sharded parameters, gathered for generation and for
saving) must train like ZeRO-2 up to the order of float reductions; and a SIGTERM that reaches one rank during
update 2 must stop both ranks after that update with a complete checkpoint, from which `--resume_from_checkpoint
latest` reaches the uninterrupted run's weights, learning rates and metrics (one stop-and-resume covers resuming
under ZeRO-2 too: launches are the expensive part of this file).

The first DeepSpeed launch on a machine JIT-builds a communication op (about 2 minutes); later launches reuse it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import REPO, accelerate_command
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from rlhf_recipes.models import load_tokenizer

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

UPDATES = 3
METRICS = ("objective/kl", "objective/scores", "objective/rlhf_reward", "policy/approxkl_avg", "loss/policy_avg",
           "loss/value_avg", "loss/ptx", "objective/kl_coef", "lr", "episode")


@pytest.fixture(scope="module")
def reward_dir(sft_dir, tmp_path_factory) -> Path:
    """A reward model straight from the SFT checkpoint (random scalar head): the PPO math does not need a good one."""
    out = tmp_path_factory.mktemp("ppo-ds-rm")
    tokenizer = load_tokenizer(str(sft_dir))
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(sft_dir), num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def launch(stage: str, out: Path, demo_dir: Path, sft_dir: Path, reward_dir: Path, *extra: str,
           runner: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`accelerate launch` the PPO recipe; with `runner`, through tests/recipe_runner.py with those options (and
    the exit code is the caller's to check)."""
    pytest.importorskip("deepspeed")
    script = [str(REPO / "tests/recipe_runner.py"), *runner, "ppo"] if runner else [str(REPO / "recipes/ppo.py")]
    command = accelerate_command() + [
        "--config_file", str(REPO / f"accelerate_configs/deepspeed_{stage}.yaml"), "--num_processes", "2",
        "--mixed_precision", "no", *script, "--config", str(REPO / "recipes/demo/ppo.yaml"),
        "--ddp_backend", "gloo", "--model_name_or_path", str(sft_dir), "--sft_model_path", str(sft_dir),
        "--reward_model_path", str(reward_dir), "--dataset_name", str(demo_dir / "data/prompts"),
        "--ptx_dataset", str(demo_dir / "data/ptx/train.jsonl"), "--output_dir", str(out),
        "--total_episodes", str(16 * UPDATES), "--per_device_train_batch_size", "4", "--num_mini_batches", "2",
        "--num_ppo_epochs", "1", "--response_length", "8", "--ptx_batch_size", "2", "--save_steps", "1",
        "--save_total_limit", str(UPDATES), "--max_eval_samples", "8", "--disable_tqdm", "true", *extra,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"),
                                                                              os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if not runner:
        assert result.returncode == 0, f"accelerate launch failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
    return result


@pytest.fixture(scope="module")
def runs(demo_dir, sft_dir, reward_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ppo-ds")
    for stage in ("zero2", "zero3"):
        launch(stage, root / stage, demo_dir, sft_dir, reward_dir)
    return {"zero2": root / "zero2", "zero3": root / "zero3", "root": root}


def history(run: Path) -> list[dict]:
    return json.loads((run / f"checkpoint-{UPDATES}/trainer_state.json").read_text())["log_history"]


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_policy_trained_under_deepspeed_loads_alone_with_finite_logits(runs, stage, sft_dir):
    out = runs[stage]
    policy = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    sft = AutoModelForCausalLM.from_pretrained(str(sft_dir), dtype=torch.float32).eval()
    tokenizer = load_tokenizer(str(out))
    ids = tokenizer(["I watched this comedy last night, and", "The plot"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = policy(**ids).logits
    assert torch.isfinite(logits).all()
    trained, start = policy.state_dict(), sft.state_dict()
    assert trained.keys() == start.keys()
    assert any(not torch.equal(trained[k], start[k]) for k in start)  # every rank's shard came back, trained
    assert all(trained[k].shape == start[k].shape for k in start)  # no empty ZeRO-3 placeholders
    value = AutoModelForSequenceClassification.from_pretrained(str(out / "value_model"), dtype=torch.float32)
    assert torch.isfinite(value(**ids).logits).all()

    log = history(out)
    assert [e["step"] for e in log] == list(range(1, UPDATES + 1))
    assert [e["episode"] for e in log] == [16 * (i + 1) for i in range(UPDATES)]  # both processes' episodes
    assert all(math.isfinite(e[k]) for e in log for k in METRICS)


@pytest.mark.timeout(1200)
def test_zero3_trains_like_zero2(runs, sft_dir):
    """Same episodes, same updates: only the order of float reductions differs (reduce-scatter vs all-reduce).

    Compared as norms over all weights: Adam turns a rounding-level difference in a near-zero gradient into an
    lr-sized step of either sign, so a single weight can differ by as much as it moved; the whole update cannot.
    """
    first, second = load_file(runs["zero2"] / "model.safetensors"), load_file(runs["zero3"] / "model.safetensors")
    start = load_file(sft_dir / "model.safetensors")
    keys = sorted(start)  # ZeRO-2 also writes the tied lm_head
    moved = torch.cat([(first[k] - start[k]).flatten() for k in keys]).norm().item()
    apart = torch.cat([(second[k] - first[k]).flatten() for k in keys]).norm().item()
    assert moved > 1e-3 and apart < 0.05 * moved, (apart, moved)
    for a, b in zip(history(runs["zero2"]), history(runs["zero3"])):
        for key in METRICS:
            assert b[key] == pytest.approx(a[key], abs=1e-5), key


@pytest.mark.timeout(1200)
def test_zero2_sigterm_on_one_rank_stops_both_after_that_update_and_resumes_to_the_uninterrupted_run(
        runs, demo_dir, sft_dir, reward_dir):
    from rlhf_recipes.checkpoints import checkpoint_problems

    straight = runs["zero2"]
    stopped = runs["root"] / "zero2-preempted"
    # Only rank 1 gets SIGTERM, during update 2; checkpoints are not due before update 3.
    result = launch("zero2", stopped, demo_dir, sft_dir, reward_dir, "--save_steps", "3",
                    runner=("--signal-during-step", "2:1"))
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-4000:]
    assert "exitcode  : 143" in output or "exit code 143" in output, output[-4000:]
    assert f"Stopped by SIGTERM: step 2 finished and saved in {stopped / 'checkpoint-2'}" in output, output[-4000:]
    assert sorted(p.name for p in stopped.glob("checkpoint-*")) == ["checkpoint-2"]
    assert checkpoint_problems(stopped / "checkpoint-2") == []
    assert not (stopped / "model.safetensors").exists()

    launch("zero2", stopped, demo_dir, sft_dir, reward_dir, "--resume_from_checkpoint", "latest")
    for weights in ("model.safetensors", "value_model/model.safetensors"):
        a, b = load_file(straight / weights), load_file(stopped / weights)
        for key in a:
            torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=0, msg=f"{weights}: {key}")
    log_straight, log_resumed = history(straight), history(stopped)
    assert [e["lr"] for e in log_resumed] == [e["lr"] for e in log_straight]  # the schedule resumed too
    for a, b in zip(log_straight, log_resumed, strict=True):
        assert {k: b[k] for k in METRICS} == {k: a[k] for k in METRICS}
