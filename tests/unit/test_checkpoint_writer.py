"""The checkpoint writer of checkpoints.py driven for real, fast: a bare transformers Trainer with the mixins and a
two-weight model, one process. (A kill during a multi-process save is tested end to end in
tests/integration/test_kill_resume.py.)"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from transformers import Trainer, TrainingArguments

from rlhf_recipes import checkpoints
from rlhf_recipes.checkpoints import (
    MANIFEST_FILE,
    CheckpointError,
    NonFiniteError,
    SafeTrainerMixin,
    checkpoint_problems,
    latest_checkpoint,
    sorted_checkpoints,
    verify_checkpoint,
)
from rlhf_recipes.config import UserError


class Tiny(torch.nn.Module):
    """y = w.x; the loss is (y - label)^2, or whatever `loss_override` says (to make it NaN/inf)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2, 1, bias=False)
        self.loss_override: float | None = None

    def forward(self, x, labels):
        loss = ((self.linear(x).squeeze(-1) - labels) ** 2).mean()
        if self.loss_override is not None:
            loss = loss * 0 + self.loss_override
        return {"loss": loss}


DATA = [{"x": torch.tensor([1.0, float(i)]), "labels": torch.tensor(float(i))} for i in range(8)]


class Stage(SafeTrainerMixin, Trainer):
    pass


def make_trainer(run_dir: Path, **overrides) -> Stage:
    torch.manual_seed(0)
    args = dict(output_dir=str(run_dir), report_to="none", use_cpu=True, per_device_train_batch_size=2,
                max_steps=3, save_strategy="steps", save_steps=1, logging_strategy="no", learning_rate=0.1,
                dataloader_num_workers=0, disable_tqdm=True)
    args.update(overrides)
    return Stage(model=Tiny(), args=TrainingArguments(**args), train_dataset=DATA)


def names(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir())


def test_each_save_is_a_complete_checkpoint_with_a_manifest_that_verifies(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.train()
    # Three saves, no staging folder left behind.
    assert [p.name for p in sorted_checkpoints(tmp_path)] == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert not [n for n in names(tmp_path) if n.startswith("tmp-")]
    last = tmp_path / "checkpoint-3"
    manifest = json.loads((last / MANIFEST_FILE).read_text())["files"]
    # Every file of the checkpoint is listed with its size; the weights also with their sha256.
    on_disk = {p.relative_to(last).as_posix() for p in last.rglob("*") if p.is_file() and p.name != MANIFEST_FILE}
    assert set(manifest) == on_disk
    assert {"model.safetensors", "trainer_state.json", "optimizer.pt"} <= on_disk
    assert all(manifest[n]["size"] == (last / n).stat().st_size for n in on_disk)
    assert "sha256" in manifest["model.safetensors"] and "sha256" not in manifest["optimizer.pt"]
    assert json.loads((last / "trainer_state.json").read_text())["global_step"] == 3
    assert json.loads((last / MANIFEST_FILE).read_text())["version"] == 1  # so a later format can be told apart
    assert checkpoint_problems(last) == []
    assert verify_checkpoint(last) == str(last)
    assert latest_checkpoint(tmp_path) == str(last)
    # The saved weights are the trained ones (the model moved from its seed-0 start).
    from safetensors.torch import load_file

    saved = load_file(str(last / "model.safetensors"))["linear.weight"]
    assert torch.equal(saved, trainer.model.linear.weight.detach())
    torch.manual_seed(0)
    assert not torch.equal(saved, torch.nn.Linear(2, 1, bias=False).weight)


def test_rotation_keeps_the_newest_n_only_after_the_new_one_is_in_place(tmp_path):
    make_trainer(tmp_path, max_steps=4, save_total_limit=2).train()
    assert names(tmp_path) == ["checkpoint-3", "checkpoint-4"]
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")


def test_without_a_limit_every_checkpoint_stays(tmp_path):
    make_trainer(tmp_path, max_steps=2, save_total_limit=None).train()
    assert names(tmp_path) == ["checkpoint-1", "checkpoint-2"]


def test_the_trainer_sees_no_limit_during_the_save_and_gets_it_back_after(tmp_path, monkeypatch):
    """The Trainer's own rotation would delete old checkpoints before the new one is renamed into place."""
    seen = []
    original = Trainer._save_checkpoint

    def spy(self, model, trial):
        seen.append((self.args.save_total_limit, self._get_output_dir(trial)))
        return original(self, model, trial)

    monkeypatch.setattr(Trainer, "_save_checkpoint", spy)
    trainer = make_trainer(tmp_path, max_steps=1, save_total_limit=1)
    trainer.train()
    assert seen == [(None, str(tmp_path / "tmp-checkpoint-1"))]
    assert trainer.args.save_total_limit == 1
    assert trainer._get_output_dir(None) == str(tmp_path)  # the staging root is only for the save


def test_a_write_that_fails_mid_save_leaves_no_half_checkpoint_and_the_previous_one_intact(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, max_steps=2)
    original = Trainer._save_optimizer_and_scheduler

    def fails_at_step_2(self, output_dir):
        if self.state.global_step == 2:
            (Path(output_dir) / "optimizer.pt").write_bytes(b"half")  # a partial file, as a full disk leaves
            raise OSError(28, "No space left on device")
        return original(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", fails_at_step_2)
    with pytest.raises(CheckpointError) as caught:
        trainer.train()
    assert isinstance(caught.value, UserError)
    message = str(caught.value)
    assert message.startswith(f"Could not save checkpoint-2 in {tmp_path}: [Errno 28] No space left on device (")
    assert "MiB free on that disk)" in message
    assert f"The previous checkpoint {tmp_path / 'checkpoint-1'} is intact." in message
    assert "--resume_from_checkpoint latest" in message
    assert names(tmp_path) == ["checkpoint-1"]  # the staging folder is gone, no checkpoint-2
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint-1")
    assert trainer.args.save_total_limit is None and trainer._get_output_dir(None) == str(tmp_path)


def test_a_failed_first_save_says_no_earlier_checkpoint_exists(tmp_path, monkeypatch):
    def fails(self, output_dir):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", fails)
    with pytest.raises(CheckpointError, match=r"unexpected pos 576 vs 534 \(.*\)\. No earlier checkpoint exists\."):
        make_trainer(tmp_path, max_steps=1).train()
    assert names(tmp_path) == []


def test_a_bug_during_the_save_keeps_its_own_error_and_cleans_up(tmp_path, monkeypatch):
    def buggy(self, output_dir):
        raise KeyError("optimizer")

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", buggy)
    with pytest.raises(KeyError, match="optimizer"):
        make_trainer(tmp_path, max_steps=1).train()
    assert names(tmp_path) == []


def test_a_manifest_that_cannot_be_written_is_a_checkpoint_error(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, max_steps=2)
    original = checkpoints.write_manifest

    def fails_at_step_2(folder):
        if Path(folder).name == "checkpoint-2":
            raise PermissionError(13, "Permission denied")
        return original(folder)

    monkeypatch.setattr(checkpoints, "write_manifest", fails_at_step_2)
    with pytest.raises(CheckpointError, match=r"Could not save checkpoint-2 .*Permission denied"):
        trainer.train()
    assert names(tmp_path) == ["checkpoint-1"]


def test_a_leftover_staging_folder_of_a_killed_save_is_cleared_first(tmp_path):
    leftover = tmp_path / "tmp-checkpoint-1" / "checkpoint-1"
    leftover.mkdir(parents=True)
    (leftover / "junk.bin").write_bytes(b"x" * 10)
    make_trainer(tmp_path, max_steps=1).train()
    assert names(tmp_path) == ["checkpoint-1"]
    assert not (tmp_path / "checkpoint-1" / "junk.bin").exists()
    assert checkpoint_problems(tmp_path / "checkpoint-1") == []


def test_resaving_a_step_replaces_the_folder_and_a_failed_rename_restores_the_old_one(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, max_steps=1)
    trainer.train()
    old = tmp_path / "checkpoint-1"
    (old / "stale.txt").write_text("from before")
    # A re-save of the same step (resumed from an earlier checkpoint) replaces the folder whole.
    trainer._save_checkpoint(trainer.model, None)
    assert names(tmp_path) == ["checkpoint-1"] and not (old / "stale.txt").exists()
    assert checkpoint_problems(old) == []

    (old / "stale.txt").write_text("from before")
    real_replace = os.replace

    def rename_into_place_fails(src, dst):
        if Path(src).parent.name == "tmp-checkpoint-1":
            raise OSError(5, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(checkpoints.os, "replace", rename_into_place_fails)
    with pytest.raises(CheckpointError, match="Input/output error"):
        trainer._save_checkpoint(trainer.model, None)
    monkeypatch.undo()
    # The old folder was moved aside and put back: same content, nothing else left.
    assert names(tmp_path) == ["checkpoint-1"]
    assert (old / "stale.txt").read_text() == "from before"


def test_replace_folder_moves_into_place_and_keeps_no_aside_copy(tmp_path):
    source, target = tmp_path / "src", tmp_path / "dst"
    source.mkdir()
    (source / "a").write_text("new")
    checkpoints._replace_folder(source, target)
    assert (target / "a").read_text() == "new" and not source.exists()
    (tmp_path / "tmp-old-dst").mkdir()  # left by a killed replace
    (tmp_path / "tmp-old-dst" / "x").write_text("junk")
    source.mkdir()
    (source / "b").write_text("newer")
    checkpoints._replace_folder(source, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst"]
    assert [p.name for p in target.iterdir()] == ["b"]


def test_rotate_removes_the_oldest_beyond_the_limit_by_step_number(tmp_path):
    for step in (2, 10, 9, 1):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "tmp-checkpoint-11").mkdir()
    checkpoints._rotate(str(tmp_path), 0)  # 0 / None: no limit
    assert len(names(tmp_path)) == 5
    checkpoints._rotate(str(tmp_path), 2)
    assert names(tmp_path) == ["checkpoint-10", "checkpoint-9", "tmp-checkpoint-11"]


def test_free_space_names_the_mebibytes_free_or_nothing_when_unknown(tmp_path, monkeypatch):
    class Usage:
        free = 3 * 2**20 + 2**19 + 1  # 3.5 MiB and a byte: rounds to 4

    monkeypatch.setattr(checkpoints.shutil, "disk_usage", lambda folder: Usage)
    assert checkpoints._free_space(str(tmp_path)) == " (4 MiB free on that disk)"

    def gone(folder):
        raise FileNotFoundError(folder)

    monkeypatch.setattr(checkpoints.shutil, "disk_usage", gone)
    assert checkpoints._free_space(str(tmp_path)) == ""


def test_any_rank_is_the_local_flag_in_one_process():
    assert checkpoints._any_rank(True, "cpu") is True
    assert checkpoints._any_rank(False, "cpu") is False


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_training_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, bad):
    original = Trainer.training_step

    def step(self, model, inputs, num_items_in_batch=None):
        model.loss_override = bad if self.state.global_step == 2 else None  # the third step's loss
        return original(self, model, inputs, num_items_in_batch)

    monkeypatch.setattr(Trainer, "training_step", step)
    with pytest.raises(NonFiniteError) as caught:
        make_trainer(tmp_path, max_steps=3).train()
    assert isinstance(caught.value, UserError)
    assert str(caught.value).startswith(f"Non-finite training loss ({bad}) at step 3 of {tmp_path}.")
    assert "--resume_from_checkpoint latest" in str(caught.value)
    assert names(tmp_path) == ["checkpoint-1", "checkpoint-2"]
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")


def test_a_finite_loss_passes_through_training_step_unchanged(tmp_path):
    trainer = make_trainer(tmp_path)
    batch = {"x": torch.tensor([[1.0, 2.0]]), "labels": torch.tensor([0.0])}
    with torch.no_grad():
        trainer.model.linear.weight.copy_(torch.tensor([[1.0, 1.0]]))
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    trainer.current_gradient_accumulation_steps = 1  # set by train() otherwise
    loss = trainer.training_step(trainer.model, batch)
    assert loss.item() == pytest.approx(9.0)  # (1 + 2 - 0)^2


def test_checkpoint_pushes_wait_for_the_rename(tmp_path, monkeypatch):
    """With push_to_hub, the Trainer pushes from inside the save; the push must see the final, manifested folder."""
    pushed = []
    monkeypatch.setattr(checkpoints.HubPushMixin, "_push_from_checkpoint",
                        lambda self, folder: pushed.append((folder, sorted(os.listdir(folder))
                                                            if os.path.isdir(folder) else None)))
    original = Trainer._save_checkpoint

    def save_then_push(self, model, trial):  # what Trainer._save_checkpoint does with push_to_hub
        original(self, model, trial)
        self._push_from_checkpoint(os.path.join(self._get_output_dir(trial), "checkpoint-1"))

    monkeypatch.setattr(Trainer, "_save_checkpoint", save_then_push)
    trainer = make_trainer(tmp_path, max_steps=1)
    trainer.train()
    assert len(pushed) == 1
    folder, files = pushed[0]
    assert folder == str(tmp_path / "checkpoint-1") and MANIFEST_FILE in files
    assert trainer._push_after_rename is False
    # Outside a save, a push goes straight through.
    trainer._push_from_checkpoint(str(tmp_path / "elsewhere"))
    assert pushed[1:] == [(str(tmp_path / "elsewhere"), None)]


class TakesLossKwargs(Tiny):
    """Accepts loss kwargs as transformers' causal LMs do, so the Trainer hands it `num_items_in_batch`."""

    def __init__(self) -> None:
        super().__init__()
        self.items_seen: list = []

    def forward(self, x, labels, **kwargs):
        self.items_seen.append(kwargs.get("num_items_in_batch"))
        return super().forward(x, labels)


def test_training_step_hands_the_batch_item_count_on_to_the_loss(tmp_path):
    """With gradient accumulation a causal LM's loss is summed over the accumulated tokens and divided by
    `num_items_in_batch`; a training_step that dropped it would normalise each micro-batch on its own."""
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, per_device_train_batch_size=2,
                             gradient_accumulation_steps=2, max_steps=1, save_strategy="no", logging_strategy="no",
                             disable_tqdm=True)
    model = TakesLossKwargs()
    Stage(model=model, args=args, train_dataset=DATA).train()
    assert [int(n) for n in model.items_seen] == [4, 4]  # 2 micro-batches of 2 labels, counted together


@pytest.mark.parametrize("how", ["positional", "keyword"])
def test_a_run_resumes_from_the_latest_written_checkpoint(tmp_path, how):
    make_trainer(tmp_path, max_steps=2).train()
    latest = latest_checkpoint(tmp_path)
    assert latest == str(tmp_path / "checkpoint-2")
    for step in (1, 2):  # a run that restarted from step 0 would save these steps again, replacing the folders
        (tmp_path / f"checkpoint-{step}" / "first-run").write_text("kept")
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, per_device_train_batch_size=2,
                             max_steps=3, save_steps=1, logging_strategy="no", disable_tqdm=True)
    trainer = Stage(Tiny(), args, None, DATA)  # positional, as a subclass's __init__ may pass them
    result = trainer.train(latest) if how == "positional" else trainer.train(resume_from_checkpoint=latest)
    assert result.global_step == 3
    assert names(tmp_path) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert all((tmp_path / f"checkpoint-{step}" / "first-run").is_file() for step in (1, 2))
    assert json.loads((tmp_path / "checkpoint-3" / "trainer_state.json").read_text())["global_step"] == 3


# ---------------------------------------------------------------------------------------------------------------
# What a damaged or foreign checkpoint is reported as
# ---------------------------------------------------------------------------------------------------------------
def test_a_path_that_is_not_a_folder_is_refused_saying_so_and_what_to_do(tmp_path):
    with pytest.raises(CheckpointError) as caught:
        verify_checkpoint(tmp_path / "gone" / "checkpoint-5")
    assert str(caught.value) == (f"Cannot resume from {tmp_path / 'gone' / 'checkpoint-5'}: it is not a folder. "
                                 "Use another checkpoint, or start without --resume_from_checkpoint.")


def test_several_problems_are_listed_and_the_damaged_one_skipped_with_a_warning(tmp_path, caplog):
    make_trainer(tmp_path, max_steps=2).train()
    damaged = tmp_path / "checkpoint-2"
    (damaged / "optimizer.pt").unlink()
    (damaged / "trainer_state.json").write_text("{}")  # 2 bytes now
    want = ["optimizer.pt is missing",
            f"trainer_state.json has 2 bytes, the manifest says "
            f"{json.loads((damaged / MANIFEST_FILE).read_text())['files']['trainer_state.json']['size']}"]
    assert sorted(checkpoint_problems(damaged)) == sorted(want)
    with caplog.at_level("WARNING", logger="rlhf_recipes.checkpoints"):
        assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint-1")
    assert (f"Skipping damaged checkpoint {damaged}: {'; '.join(checkpoint_problems(damaged))}. "
            "Trying the one before it.") in caplog.messages
    with pytest.raises(CheckpointError) as caught:
        verify_checkpoint(damaged)
    assert str(caught.value) == (
        f"Cannot resume from {damaged}: {'; '.join(checkpoint_problems(damaged))}. The newest good checkpoint there "
        f"is {tmp_path / 'checkpoint-1'}; use it, or `--resume_from_checkpoint latest`.")


def test_without_a_manifest_each_unreadable_part_is_named(tmp_path, caplog):
    folder = tmp_path / "checkpoint-1"
    folder.mkdir()
    (folder / "trainer_state.json").write_text("{not json")
    (folder / "model.safetensors").write_bytes(b"garbage")
    problems = checkpoint_problems(folder)
    assert len(problems) == 2
    assert problems[0].startswith("no manifest.json and trainer_state.json does not parse (")
    assert problems[1].startswith("no manifest.json and model.safetensors cannot be opened (")
    # Without any weights (and no DeepSpeed global_step* folder) it is not a checkpoint either.
    (folder / "model.safetensors").unlink()
    (folder / "trainer_state.json").write_text("{}")
    assert checkpoint_problems(folder) == ["no manifest.json and no weights (*.safetensors)"]
    # A DeepSpeed checkpoint keeps its weights in global_step<N>/: accepted, with a warning naming it.
    (folder / "global_step1").mkdir()
    with caplog.at_level("WARNING", logger="rlhf_recipes.checkpoints"):
        assert checkpoint_problems(folder) == []
    assert caplog.messages == [f"Checkpoint {folder} has no manifest.json (saved before manifests); its files open, "
                               "so it is used."]
