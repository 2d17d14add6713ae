"""Reliability round 2: model paths, context lengths, user errors and exit codes, checkpoint manifests, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO
from safetensors.torch import save_file

from rlhf_recipes import preemption
from rlhf_recipes.checkpoints import (
    CheckpointError,
    checkpoint_problems,
    latest_checkpoint,
    verify_checkpoint,
    write_manifest,
)
from rlhf_recipes.config import ConfigError, UserError
from rlhf_recipes.data import DataError
from rlhf_recipes.models import ContextLengthError, ModelError, check_lengths, load_model, load_tokenizer

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}


# ---------------------------------------------------------------------------------------------------------------
# Model and tokenizer paths
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["runs/gpt2/sft-that-never-ran", "./missing", "/no/such/model", "a//b", "~/nothing"])
def test_a_missing_local_path_says_no_such_folder_and_not_a_hub_id(name):
    for load in (load_tokenizer, lambda n: load_model(SimpleNamespace(model_name_or_path=n, model_revision="main"),
                                                      None)):
        with pytest.raises(ModelError) as err:
            load(name)
        assert f"{name!r} is no such local folder, and not a valid Hub id" in str(err.value)
        assert isinstance(err.value, UserError) and isinstance(err.value, OSError)


def test_an_uncached_hub_id_offline_names_hf_hub_offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelError) as err:
        load_tokenizer("someone/model-that-is-not-cached")
    message = str(err.value)
    assert "'someone/model-that-is-not-cached' is not a local folder" in message
    assert "not in the local cache" in message and "HF_HUB_OFFLINE=1" in message


def test_an_empty_name_and_a_folder_without_a_model(tmp_path):
    with pytest.raises(ConfigError, match="No tokenizer given"):
        load_tokenizer("")
    unfinished = tmp_path / "sft"
    (unfinished / "checkpoint-30").mkdir(parents=True)
    with pytest.raises(ModelError) as err:
        load_tokenizer(str(unfinished))
    assert f"folder {unfinished} holds no model" in str(err.value)
    assert "It holds checkpoint-30: the run did not finish" in str(err.value)


def test_a_file_instead_of_a_folder(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ModelError, match="is a file; give the folder"):
        load_tokenizer(str(tmp_path / "model.safetensors"))


# ---------------------------------------------------------------------------------------------------------------
# Length fields against the model's context (the demo base: n_positions 128)
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("stage", "fields", "generation", "words"), [
    ("SFT", {"max_length": 129}, None, "max_length 129 is longer than the 128-token context"),
    ("reward model", {"max_length": 1024}, None, "max_length 1024 is longer than the 128-token context"),
    ("PPO", {"response_length": 128, "ptx_max_length": 96}, (None, "response_length"),
     "response_length 128 leaves no room for a prompt in the 128-token context"),
    ("PPO", {"response_length": 24, "ptx_max_length": 200}, (None, "response_length"),
     "ptx_max_length 200 is longer than the 128-token context"),
    ("evaluation", {"response_length": 500}, (None, "response_length"), "response_length 500 is longer than"),
    ("generation", {"max_prompt_length": 100, "max_completion_length": 40},
     ("max_prompt_length", "max_completion_length"), "max_prompt_length 100 + max_completion_length 40 = 140"),
    ("generation", {"max_new_tokens": 4096}, None, "max_new_tokens 4096 is longer than"),
    ("PPO", {"response_length": 0}, (None, "response_length"), "response_length must be at least 1, got 0"),
    ("SFT", {"max_length": -5}, None, "max_length must be at least 1, got -5"),
])
def test_each_stage_refuses_lengths_beyond_the_context(demo_dir, stage, fields, generation, words):
    base = str(demo_dir / "base")
    with pytest.raises(ContextLengthError) as err:
        check_lengths(SimpleNamespace(**fields), [base, None], stage=stage, generation=generation)
    assert str(err.value).startswith(f"{stage}: ") and words in str(err.value)
    assert base in str(err.value) or "at least 1" in words
    assert isinstance(err.value, ConfigError)


def test_lengths_that_fit_pass_and_an_unset_max_length_becomes_the_context(demo_dir, caplog):
    base = str(demo_dir / "base")
    args = SimpleNamespace(max_length=None, response_length=24, ptx_max_length=128)
    with caplog.at_level("WARNING", logger="rlhf_recipes.models"):
        assert check_lengths(args, base, stage="SFT", fill_unset=("max_length",),
                             generation=(None, "response_length")) == 128
    assert args.max_length == 128 and "max_length is unset; using 128" in caplog.text


def run_sft_main(argv: list[str]):
    """recipes/sft.py as its `__main__` runs it (`run_main`), in this process."""
    from conftest import load_recipe

    from rlhf_recipes.config import run_main

    module = load_recipe("sft")
    return run_main(module.main, module.DATACLASSES, argv)


def test_recipe_max_length_beyond_the_context_stops_before_training_with_exit_code_2(demo_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        run_sft_main(["--config", str(REPO / "recipes/demo/sft.yaml"), "--model_name_or_path",
                      str(demo_dir / "base"), "--dataset_name", str(demo_dir / "data/sft"),
                      "--output_dir", str(tmp_path / "out"), "--max_length", "512"])
    assert stop.value.code == 2
    assert "error: SFT: max_length 512 is longer than the 128-token context" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------------------
# User errors: one paragraph, exit code 2, no traceback unless asked; bugs keep their traceback
# ---------------------------------------------------------------------------------------------------------------
def test_user_errors_share_one_base():
    from rlhf_recipes.checkpoints import NonFiniteError

    assert all(issubclass(cls, UserError) for cls in (ConfigError, DataError, ModelError, CheckpointError,
                                                       ContextLengthError, NonFiniteError))


def failing_sft_args(tmp_path) -> list[str]:
    return ["--config", str(REPO / "recipes/demo/sft.yaml"), "--model_name_or_path", str(tmp_path / "missing-model"),
            "--dataset_name", str(tmp_path / "data.jsonl"), "--output_dir", str(tmp_path / "out")]


def test_a_user_error_exits_2_with_one_paragraph_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as stop:
        run_sft_main(failing_sft_args(tmp_path))
    assert stop.value.code == 2
    err = capsys.readouterr().err
    error_lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and "missing-model' is no such local folder" in error_lines[0]
    assert "--debug" in err and "Traceback" not in err
    # --debug (stripped before the parser sees it) or RLHF_DEBUG=1: the exception itself, traceback and all.
    with pytest.raises(ModelError):
        run_sft_main([*failing_sft_args(tmp_path), "--debug"])
    monkeypatch.setenv("RLHF_DEBUG", "1")
    with pytest.raises(ModelError):
        run_sft_main(failing_sft_args(tmp_path))


def test_an_output_folder_that_cannot_be_written_is_refused_before_training(tmp_path):
    from rlhf_recipes.config import ScriptArguments
    from rlhf_recipes.data import load_stage_dataset

    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"prompt": "a", "completion": " b"}) + "\n")
    (tmp_path / "a-file").write_text("")
    with pytest.raises(UserError, match=r"Cannot write to the output folder .*a-file/run.*writable `output_dir`"):
        load_stage_dataset(ScriptArguments(dataset_name=str(data)), "sft", report_dir=tmp_path / "a-file" / "run")


def test_ctrl_c_outside_a_training_loop_exits_130_quietly(capsys):
    from rlhf_recipes.config import run_main

    def main(*args):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as stop:
        run_main(main, (), [])
    assert stop.value.code == 130 and "nothing to checkpoint" in capsys.readouterr().err


def test_a_programming_error_keeps_its_traceback():
    from rlhf_recipes.config import run_main

    def main(*args):
        raise KeyError("bug")

    with pytest.raises(KeyError):
        run_main(main, (), [])


def test_a_console_run_prints_no_traceback_for_a_user_error(tmp_path):
    """Once as a real process: the exit code and stderr a user sees (no traceback printed by Python)."""
    code = ("import sys\nfrom rlhf_recipes.config import run_main\nfrom rlhf_recipes.data import DataError\n"
            "def main(*args):\n    raise DataError('data.jsonl, line 3, column \\'prompt\\': expected a string.\\n"
            "Fix it.')\nrun_main(main, (), [])\n")
    result = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: data.jsonl, line 3, column 'prompt': expected a string. Fix it.\n" in result.stderr


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint manifests
# ---------------------------------------------------------------------------------------------------------------
def fake_checkpoint(run_dir: Path, step: int, manifest: bool = True) -> Path:
    folder = run_dir / f"checkpoint-{step}"
    (folder / "value_model").mkdir(parents=True)
    save_file({"w": torch.full((64,), float(step))}, str(folder / "model.safetensors"))
    save_file({"v": torch.ones(8)}, str(folder / "value_model" / "model.safetensors"))
    torch.save({"step": step}, folder / "optimizer.pt")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if manifest:
        write_manifest(folder)
    return folder


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("damage", "words"), [
    (lambda c: (c / "model.safetensors").write_bytes((c / "model.safetensors").read_bytes()[:100]),
     "model.safetensors has 100 bytes"),
    (lambda c: flip_a_byte(c / "value_model" / "model.safetensors"), "value_model/model.safetensors does not match"),
    (lambda c: (c / "optimizer.pt").unlink(), "optimizer.pt is missing"),
    (lambda c: (c / "manifest.json").write_text("{"), "manifest.json does not parse"),
    (lambda c: (c / "manifest.json").unlink() or (c / "trainer_state.json").unlink(),
     "no manifest.json and no trainer_state.json"),
])
def test_latest_skips_a_damaged_newest_checkpoint_and_an_explicit_path_to_it_is_an_error(tmp_path, caplog, damage,
                                                                                          words):
    fake_checkpoint(tmp_path, 3)
    newest = fake_checkpoint(tmp_path, 6)
    (tmp_path / "tmp-checkpoint-9").mkdir()  # a save that was killed: never a candidate
    assert checkpoint_problems(newest) == [] and latest_checkpoint(tmp_path) == str(newest)
    damage(newest)
    with caplog.at_level("WARNING", logger="rlhf_recipes.checkpoints"):
        assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint-3")
    assert f"Skipping damaged checkpoint {newest}" in caplog.text and words in caplog.text
    with pytest.raises(CheckpointError) as err:
        verify_checkpoint(newest)
    assert f"Cannot resume from {newest}: " in str(err.value) and words in str(err.value)
    assert f"newest good checkpoint there is {tmp_path / 'checkpoint-3'}" in str(err.value)


def test_resume_argument_latest_name_path_and_missing(tmp_path):
    from rlhf_recipes.outputs import resolve_resume_checkpoint

    good = fake_checkpoint(tmp_path, 4)
    flip_a_byte(fake_checkpoint(tmp_path, 8) / "model.safetensors")

    def resolve(value):
        return resolve_resume_checkpoint(SimpleNamespace(resume_from_checkpoint=value, output_dir=str(tmp_path)))

    assert resolve("latest") == resolve("true") == str(good)
    assert resolve("checkpoint-4") == str(good)  # a name inside output_dir
    assert resolve(None) is None
    with pytest.raises(CheckpointError, match="checkpoint-8: model.safetensors does not match its sha256"):
        resolve("checkpoint-8")
    with pytest.raises(CheckpointError, match="is not a folder"):
        resolve(str(tmp_path / "checkpoint-99"))
    assert resolve_resume_checkpoint(SimpleNamespace(resume_from_checkpoint="latest",
                                                     output_dir=str(tmp_path / "new"))) is None  # fresh start


def test_every_trainer_checkpoints_atomically_and_stops_on_signals():
    from rlhf_recipes.checkpoints import AtomicCheckpointMixin
    from rlhf_recipes.ppo import PPOTrainer
    from rlhf_recipes.reward import RewardTrainer
    from rlhf_recipes.sft import SFTTrainer

    assert all(issubclass(cls, AtomicCheckpointMixin) for cls in (SFTTrainer, RewardTrainer, PPOTrainer))


def test_the_mixin_adds_the_stop_callback_and_restores_signals_when_train_raises(tmp_path, monkeypatch):
    """What every stage's trainer gets from AtomicCheckpointMixin, on a bare transformers Trainer: the callback that
    turns SIGTERM/SIGINT into a stop with a checkpoint, and signal handlers that do not outlive a train() that
    raises (which skips on_train_end)."""
    from transformers import Trainer, TrainingArguments

    from rlhf_recipes.checkpoints import AtomicCheckpointMixin

    class Broken(Exception):
        pass

    def train_that_raises(self, *args, **kwargs):
        self.callback_handler.on_train_begin(self.args, self.state, self.control)  # installs the handlers
        assert signal.getsignal(signal.SIGTERM) is preemption._handler
        raise Broken

    monkeypatch.setattr(Trainer, "train", train_that_raises)

    class Stage(AtomicCheckpointMixin, Trainer):
        pass

    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = Stage(model=torch.nn.Linear(2, 1), args=args)
    assert sum(isinstance(cb, preemption.PreemptionCallback) for cb in trainer.callback_handler.callbacks) == 1
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Broken):
        trainer.train()
    assert signal.getsignal(signal.SIGTERM) is before


def test_write_errors_are_recognised_whatever_their_type_and_bugs_are_not():
    from rlhf_recipes.checkpoints import _storage_error

    assert _storage_error(OSError(28, "No space left on device"))
    assert _storage_error(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"))
    assert _storage_error(Exception("Error while serializing: I/O error: No space left on device (os error 28)"))
    assert not _storage_error(KeyError("optimizer")) and not _storage_error(RuntimeError("shape mismatch"))


def test_a_checkpoint_without_manifest_is_used_when_its_files_open(tmp_path, caplog):
    legacy = fake_checkpoint(tmp_path, 2, manifest=False)
    with caplog.at_level("WARNING", logger="rlhf_recipes.checkpoints"):
        assert latest_checkpoint(tmp_path) == str(legacy)
    assert "has no manifest.json" in caplog.text
    (legacy / "model.safetensors").write_bytes(b"garbage")
    (legacy / "value_model" / "model.safetensors").unlink()
    assert latest_checkpoint(tmp_path) is None


# ---------------------------------------------------------------------------------------------------------------
# Signals (the stop, with a checkpoint, is tested end to end in tests/integration/test_kill_resume.py)
# ---------------------------------------------------------------------------------------------------------------
def test_first_signal_sets_the_flag_a_forwarded_copy_is_ignored_a_second_one_exits_at_once(monkeypatch):
    exits = []
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a shell's background job
    monkeypatch.setattr(preemption.os, "_exit", exits.append)
    clock = [100.0]
    monkeypatch.setattr(preemption.time, "monotonic", lambda: clock[0])
    with preemption.handle_signals():
        assert signal.getsignal(signal.SIGINT) is preemption._handler
        assert not preemption.stop_requested()
        preemption._handler(signal.SIGINT, None)
        assert preemption.stop_requested() and preemption.exit_code() == 130 and not exits
        clock[0] += 0.01  # the launcher's forwarded copy
        preemption._handler(signal.SIGINT, None)
        assert not exits
        clock[0] += preemption.DUPLICATE_WINDOW_S + 1
        preemption._handler(signal.SIGINT, None)
        assert exits == [130]
        assert preemption.stop_agreed() and preemption.exit_code() == 130
    assert signal.getsignal(signal.SIGINT) is before  # restored
    assert preemption.EXIT_CODES[signal.SIGTERM] == 143


def test_a_stop_that_takes_longer_than_the_grace_period_exits_anyway(monkeypatch):
    exits = []
    monkeypatch.setattr(preemption.os, "_exit", exits.append)
    monkeypatch.setenv(preemption.GRACE_ENV, "0.05")
    with preemption.handle_signals():
        preemption._handler(signal.SIGTERM, None)
        deadline = time.time() + 5
        while not exits and time.time() < deadline:
            time.sleep(0.01)
    assert exits == [143]


def test_preempted_is_a_system_exit_with_the_shell_code():
    stop = preemption.Preempted("sampling stopped after batch 3", "Rerun to continue.", signum=signal.SIGINT)
    assert isinstance(stop, SystemExit) and stop.code == 130
    assert str(stop) == "Stopped by SIGINT: sampling stopped after batch 3. Rerun to continue. (exit code 130)"
