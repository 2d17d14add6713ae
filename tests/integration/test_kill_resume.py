"""A run killed with SIGKILL (during training, or in the middle of a checkpoint save), or stopped by SIGTERM, and
resumed with `--resume_from_checkpoint latest` ends with the same weights and metrics as an uninterrupted seeded
run; a save that fails for lack of space leaves the previous checkpoint usable."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_recipe
from recipe_runner import record_steps
from safetensors.torch import load_file
from transformers.trainer_callback import CallbackHandler

from rlhf_recipes.checkpoints import CheckpointError, checkpoint_problems, latest_checkpoint

RUNNER = str(REPO / "tests" / "recipe_runner.py")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO / "src")])}  # this checkout's code


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


def resume_and_record_steps(args: list[str], out: Path, tmp_path: Path) -> tuple[int, list[int]]:
    """Resume the run in `out` from its latest checkpoint in a subprocess: (that checkpoint's step, the steps the
    resumed process ran)."""
    start = int(Path(latest_checkpoint(out)).name.split("-")[1])
    steps_file = tmp_path / "steps.txt"
    resumed = run([*args, "--resume_from_checkpoint", "latest"], prefix=["--record-steps", str(steps_file)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return start, [int(line) for line in steps_file.read_text().split()]


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
    start, steps = resume_and_record_steps(stage_args(stage, demo_dir, sft_dir, killed), killed, tmp_path)
    # The resumed process ran only the steps after its checkpoint; a restart from step 0 reaches the same seeded
    # weights, but redoes them.
    assert start >= 3 and steps == list(range(start + 1, 10))
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
    start, steps = resume_and_record_steps(stage_args("sft", demo_dir, None, killed), killed, tmp_path)
    assert (start, steps) == (3, [4, 5, 6, 7, 8, 9])  # from checkpoint-3, not from step 0
    assert not (killed / "tmp-checkpoint-6").exists(), "a later save of the same step replaces the staging folder"
    assert_same_run(reference, killed)


@pytest.mark.slow
def test_sigterm_mid_step_saves_that_step_exits_143_and_resumes_to_the_uninterrupted_run(demo_dir, uninterrupted,
                                                                                          tmp_path, one_torch_thread):
    reference = uninterrupted("sft")

    stopped = tmp_path / "preempted"
    # SIGTERM arrives while step 4 runs (checkpoints are due at 3, 6, 9): step 4 finishes and is saved.
    result = run(stage_args("sft", demo_dir, None, stopped), prefix=["--signal-during-step", "4"])
    assert result.returncode == 143, result.stderr[-3000:]
    assert f"Stopped by SIGTERM: step 4 finished and saved in {stopped / 'checkpoint-4'}" in result.stderr
    assert "--resume_from_checkpoint latest" in result.stderr and "Traceback" not in result.stderr
    assert not (stopped / "model.safetensors").exists(), "a preempted run must not save a final model"
    assert checkpoint_problems(stopped / "checkpoint-4") == [] and (stopped / "checkpoint-4/manifest.json").is_file()
    assert latest_checkpoint(stopped) == str(stopped / "checkpoint-4")
    assert json.loads((stopped / "checkpoint-4/trainer_state.json").read_text())["global_step"] == 4

    # The resume in this process (one thread, as the subprocesses): it saves a process start.
    recipe, *args = stage_args("sft", demo_dir, None, stopped)
    steps = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CallbackHandler, "on_step_end", CallbackHandler.on_step_end)  # undone after the resume
        record_steps(steps)
        run_recipe(recipe, [*args, "--resume_from_checkpoint", "latest"])
    assert steps == [5, 6, 7, 8, 9]  # steps 1-4 are not redone
    assert_same_run(reference, stopped)


# What a full disk really raises inside torch.save (measured on a 10 MiB tmpfs): no errno, no "space".
TORCH_DISK_FULL = "[enforce fail at inline_container.cc:672] . unexpected pos 6848 vs 6740"


@pytest.mark.parametrize(("error", "words"), [
    (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
    (OSError(errno.EACCES, "Permission denied"), "Permission denied"),
    (RuntimeError(TORCH_DISK_FULL), "unexpected pos"),
], ids=["ENOSPC", "EACCES", "torch-zip-writer"])
def test_a_save_that_fails_keeps_the_previous_checkpoint_and_says_why(error, words, demo_dir, tmp_path, monkeypatch):
    from stage_runs import sft_args
    from transformers import Trainer

    original = Trainer._save_optimizer_and_scheduler

    def disk_full_at_step_4(self, output_dir):
        if self.state.global_step == 4:
            raise error
        return original(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", disk_full_at_step_4)
    handlers_before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    out = tmp_path / "full"
    with pytest.raises(CheckpointError) as err:
        run_recipe("sft", sft_args(demo_dir, out, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2",
                                   "--eval_strategy", "no"))
    message = str(err.value)
    assert "Could not save checkpoint-4" in message and words in message
    assert f"The previous checkpoint {out / 'checkpoint-2'} is intact" in message
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint-2"]  # no staging left
    assert checkpoint_problems(out / "checkpoint-2") == []
    # train() ended by an exception, without on_train_end: the signal handlers are the previous ones again.
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers_before


def test_a_final_save_that_fails_is_a_user_error_that_points_at_the_last_checkpoint(demo_dir, tmp_path, monkeypatch):
    from stage_runs import sft_args
    from transformers import Trainer

    original = Trainer.save_model

    def disk_full_at_the_end(self, output_dir=None, _internal_call=False):
        if "checkpoint-" not in str(output_dir):  # checkpoints save fine, the final model does not
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, output_dir, _internal_call)

    monkeypatch.setattr(Trainer, "save_model", disk_full_at_the_end)
    out = tmp_path / "final-full"
    with pytest.raises(CheckpointError) as err:
        run_recipe("sft", sft_args(demo_dir, out, "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "2",
                                   "--eval_strategy", "no"))
    message = str(err.value)
    assert f"Could not write the final sft model to {out}" in message and "No space left on device" in message
    assert f"The last checkpoint, {out / 'checkpoint-2'}, is intact" in message
    assert "--resume_from_checkpoint latest" in message and checkpoint_problems(out / "checkpoint-2") == []
    # as the message says: the same command, resumed from that checkpoint, writes the final model
    monkeypatch.setattr(Trainer, "save_model", original)
    run_recipe("sft", sft_args(demo_dir, out, "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "2",
                               "--eval_strategy", "no", "--resume_from_checkpoint", "latest"))
    assert (out / "model.safetensors").is_file() and (out / "stage_metrics.json").is_file()
