"""A run killed with SIGKILL (during training, or in the middle of a checkpoint save) and resumed with
`--resume_from_checkpoint latest` ends with the same weights and metrics as an uninterrupted seeded run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO
from safetensors.torch import load_file

RUNNER = str(REPO / "tests" / "recipe_runner.py")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "tests")}


def stage_args(stage: str, demo_dir: Path, sft_dir: Path | None, out: Path) -> list[str]:
    common = ["--output_dir", str(out), "--save_strategy", "steps", "--save_steps", "3", "--max_steps", "9",
              "--max_eval_samples", "16", "--logging_steps", "1", "--seed", "7"]
    if stage == "sft":
        return ["sft", "--config", str(REPO / "recipes/demo/sft.yaml"), "--model_name_or_path", str(demo_dir / "base"),
                "--dataset_name", str(demo_dir / "data/sft"), "--per_device_train_batch_size", "8", *common]
    return ["reward", "--config", str(REPO / "recipes/demo/reward.yaml"), "--model_name_or_path", str(sft_dir),
            "--dataset_name", str(demo_dir / "data/reward"), "--normalization_dataset", str(demo_dir / "data/sft"),
            "--normalization_samples", "16", "--max_train_samples", "64", "--per_device_train_batch_size", "8",
            *common]


def run(args: list[str], prefix: list[str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, RUNNER, *(prefix or []), *args], env=ENV, capture_output=True, text=True,
                          timeout=600)


def run_and_kill_after(args: list[str], checkpoint: Path) -> None:
    """Start the run and SIGKILL it as soon as `checkpoint` exists (it appears complete, by rename)."""
    process = subprocess.Popen([sys.executable, RUNNER, *args], env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while not checkpoint.exists():
        if process.poll() is not None:
            raise AssertionError(f"the run ended before {checkpoint.name}: {process.stderr.read()[-3000:]}")
        assert time.time() < deadline, "timed out waiting for the checkpoint"
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()


def final_state(out: Path) -> tuple[dict[str, torch.Tensor], list[float]]:
    weights = load_file(out / "model.safetensors")
    history = json.loads((out / "checkpoint-9" / "trainer_state.json").read_text())["log_history"]
    return weights, [entry["loss"] for entry in history if "loss" in entry]


def assert_same_run(reference: Path, resumed: Path) -> None:
    ref_weights, ref_losses = final_state(reference)
    weights, losses = final_state(resumed)
    assert ref_weights.keys() == weights.keys()
    for name, tensor in ref_weights.items():
        torch.testing.assert_close(weights[name], tensor, atol=1e-5, rtol=1e-4, msg=f"{name} differs after resume")
    assert losses == pytest.approx(ref_losses, rel=1e-4)
    assert json.loads((resumed / "stage_metrics.json").read_text())["stage"] in ("sft", "reward")


@pytest.fixture(scope="module")
def uninterrupted(demo_dir, sft_dir, tmp_path_factory):
    """The reference runs, one per stage, shared by the tests of this module."""
    def reference(stage: str) -> Path:
        out = tmp_path_factory.getbasetemp() / f"uninterrupted-{stage}"
        if not (out / "model.safetensors").is_file():
            done = run(stage_args(stage, demo_dir, sft_dir, out))
            assert done.returncode == 0, done.stderr[-3000:]
        return out
    return reference


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "reward"])
def test_sigkill_during_training_then_resume_matches_uninterrupted(stage, demo_dir, sft_dir, uninterrupted, tmp_path):
    reference = uninterrupted(stage)

    killed = tmp_path / "killed"
    run_and_kill_after(stage_args(stage, demo_dir, sft_dir, killed), killed / "checkpoint-3")
    assert not (killed / "model.safetensors").exists(), "the killed run must not have finished"
    resumed = run([*stage_args(stage, demo_dir, sft_dir, killed), "--resume_from_checkpoint", "latest"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(reference, killed)


@pytest.mark.slow
def test_sigkill_in_the_middle_of_a_save_leaves_the_previous_checkpoint_usable(demo_dir, uninterrupted, tmp_path):
    reference = uninterrupted("sft")

    killed = tmp_path / "killed"
    died = run(stage_args("sft", demo_dir, None, killed), prefix=["--kill-during-save", "6"])
    assert died.returncode == -signal.SIGKILL
    # The half-written save is in its staging folder; the newest complete checkpoint is still checkpoint-3.
    assert (killed / "tmp-checkpoint-6").is_dir() and not (killed / "checkpoint-6").exists()
    assert (killed / "checkpoint-3" / "optimizer.pt").is_file()
    resumed = run([*stage_args("sft", demo_dir, None, killed), "--resume_from_checkpoint", "latest"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not (killed / "tmp-checkpoint-6").exists(), "a later save of the same step replaces the staging folder"
    assert_same_run(reference, killed)
