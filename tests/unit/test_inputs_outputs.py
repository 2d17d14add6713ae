"""Inputs checked before work starts, finished stages not overwritten unasked, and clean exits through make.

The stage-level runs (a reward model whose normalisation set is missing, a rerun into a finished SFT folder) are in
tests/integration/test_stage_inputs_outputs.py; here: the pieces, on files made in the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from rlhf_recipes.config import ConfigError, MissingPathError, UserError
from rlhf_recipes.data import DataError, load_raw_dataset, read_jsonl, tokenize_texts
from rlhf_recipes.outputs import OutputExistsError, prepare_output_dir, write_stage_metrics

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}


# ---------------------------------------------------------------------------------------------------------------
# Dataset errors name the setting they came from
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["runs/missing/train.jsonl", "./nothing-here", "not a hub id!", "owner/uncached"])
def test_a_dataset_error_names_the_field_it_came_from(name):
    for field in ("dataset_name", "normalization_dataset", "ptx_dataset"):
        with pytest.raises(DataError) as err:
            load_raw_dataset(name, field=field)
        message = str(err.value)
        assert f"`{field}`" in message, message
        others = {"dataset_name", "normalization_dataset", "ptx_dataset"} - {field}
        assert not any(f"`{other}`" in message for other in others), message


def test_an_error_inside_a_file_also_names_the_field(tmp_path):
    bad = tmp_path / "ref.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": \n')
    with pytest.raises(DataError) as err:
        load_raw_dataset(str(bad), field="normalization_dataset")
    assert "line 2: malformed JSON" in str(err.value) and "`normalization_dataset`" in str(err.value)


def test_the_ptx_loader_names_ptx_dataset(tmp_path):
    with pytest.raises(DataError, match="`ptx_dataset`"):
        tokenize_texts(str(tmp_path / "ptx.jsonl"), tokenizer=None, max_length=8)
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text('{"label": 1}\n')
    with pytest.raises(DataError, match="`ptx_dataset`"):
        tokenize_texts(str(wrong), tokenizer=None, max_length=8)


def test_a_missing_jsonl_or_samples_file_is_a_user_error_that_is_still_a_file_not_found(tmp_path):
    from rlhf_recipes.feedback.store import LabelStore

    with pytest.raises(MissingPathError) as err:
        read_jsonl(tmp_path / "prompts.jsonl")
    assert isinstance(err.value, UserError) and isinstance(err.value, FileNotFoundError)
    with pytest.raises(MissingPathError, match="`samples_file`"):
        LabelStore(tmp_path / "samples.jsonl", tmp_path / "comparisons.jsonl")
    assert not (tmp_path / "comparisons.jsonl").exists()


# ---------------------------------------------------------------------------------------------------------------
# A finished stage is not trained over unasked
# ---------------------------------------------------------------------------------------------------------------
def _args(output_dir: Path, resume: str | None = None, overwrite: bool = False):
    from transformers import TrainingArguments

    from rlhf_recipes.config import ScriptArguments

    return (TrainingArguments(output_dir=str(output_dir), resume_from_checkpoint=resume, report_to="none"),
            ScriptArguments(overwrite_output_dir=overwrite))


def _finished_stage(folder: Path, metrics: dict) -> Path:
    (folder / "checkpoint-4").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    write_stage_metrics(folder, metrics)
    return folder


def test_an_empty_or_new_output_dir_and_a_data_report_alone_are_fine(tmp_path):
    assert prepare_output_dir(*_args(tmp_path / "new")) is None
    (tmp_path / "failed").mkdir()
    (tmp_path / "failed" / "data_report.json").write_text("{}")  # a run that stopped before training
    assert prepare_output_dir(*_args(tmp_path / "failed")) is None
    assert (tmp_path / "failed" / "data_report.json").is_file()


def test_a_finished_stage_is_refused_unless_asked(tmp_path):
    out = _finished_stage(tmp_path / "reward", {"stage": "reward", "eval_accuracy": 0.9})
    with pytest.raises(OutputExistsError) as err:
        prepare_output_dir(*_args(out))
    message = str(err.value)
    assert str(out) in message and "finished model" in message and "--overwrite_output_dir true" in message
    assert isinstance(err.value, ConfigError)
    assert json.loads((out / "stage_metrics.json").read_text())["eval_accuracy"] == 0.9  # untouched


def test_unfinished_checkpoints_are_refused_with_the_resume_hint_and_resuming_is_allowed(tmp_path):
    out = tmp_path / "sft"
    (out / "checkpoint-3").mkdir(parents=True)
    with pytest.raises(OutputExistsError, match="--resume_from_checkpoint latest"):
        prepare_output_dir(*_args(out))
    assert prepare_output_dir(*_args(out, resume="latest")) is None
    assert (out / "checkpoint-3").is_dir()


def test_resume_latest_without_a_checkpoint_does_not_allow_training_over_a_finished_model(tmp_path):
    out = tmp_path / "ppo"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"x")
    with pytest.raises(OutputExistsError, match="finished model"):
        prepare_output_dir(*_args(out, resume="latest"))


def test_overwrite_moves_the_old_stage_aside_and_the_new_run_starts_clean(tmp_path):
    out = _finished_stage(tmp_path / "reward", {"stage": "reward", "eval_accuracy": 0.9})
    moved = prepare_output_dir(*_args(out, overwrite=True))
    assert moved is not None and moved.parent == out.parent and moved.name.startswith("reward.previous-")
    assert not out.exists()  # nothing of the old run beside the new one
    assert json.loads((moved / "stage_metrics.json").read_text())["eval_accuracy"] == 0.9  # nothing lost
    assert (moved / "checkpoint-4").is_dir()


def test_stage_metrics_describe_the_run_that_wrote_them(tmp_path):
    write_stage_metrics(tmp_path, {"stage": "reward", "train_loss": 0.7, "eval_accuracy": 0.9})
    write_stage_metrics(tmp_path, {"stage": "reward", "train_loss": 0.5})
    assert json.loads((tmp_path / "stage_metrics.json").read_text()) == {"stage": "reward", "train_loss": 0.5}


# ---------------------------------------------------------------------------------------------------------------
# All comparisons so far in one reward dataset
# ---------------------------------------------------------------------------------------------------------------
def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_gather_joins_every_round_in_order_as_rankings(tmp_path):
    from rlhf_recipes.feedback.gather import main

    base = tmp_path / "data/reward"
    _jsonl(base / "train.jsonl", [{"prompt": "p0", "responses": ["a", "b", "c"]}])
    _jsonl(base / "test.jsonl", [{"prompt": "t0", "chosen": "good", "rejected": "bad"}])
    store_row = {"labeler": "ann", "flags": [[], ["harmful"]], "shown_order": [1, 0], "time": 1.5}
    round1 = _jsonl(tmp_path / "round1/comparisons.jsonl",
                    [{"prompt": "p1", "responses": ["x", "y"], "item_id": "i1", **store_row}])
    round2 = _jsonl(tmp_path / "round2/comparisons.jsonl",
                    [{"prompt": "p2", "responses": ["u", "v"], "item_id": "i2", **store_row},
                     {"prompt": "p3", "responses": ["s", "t"], "item_id": "i3", **store_row}])
    counts = main(["--output_dir", str(tmp_path / "all"), str(base), str(round1), str(round2)])
    assert counts == {"train": 4, "test": 1}
    train = read_jsonl(tmp_path / "all/train.jsonl")
    assert [row["prompt"] for row in train] == ["p0", "p1", "p2", "p3"]
    assert train[1] == {"prompt": "p1", "responses": ["x", "y"]}  # the store's bookkeeping columns are left out
    assert read_jsonl(tmp_path / "all/test.jsonl") == [{"prompt": "t0", "responses": ["good", "bad"]}]

    from rlhf_recipes.feedback.gather import gather_comparisons

    counts = gather_comparisons([round1, round2], tmp_path / "all", exclude_item_ids={"i2"})
    assert counts == {"train": 2}
    assert [row["prompt"] for row in read_jsonl(tmp_path / "all/train.jsonl")] == ["p1", "p3"]
    assert not (tmp_path / "all/test.jsonl").exists()  # no stale test split from the first gathering


def test_gather_refuses_rows_that_are_not_comparisons(tmp_path):
    from rlhf_recipes.feedback.gather import gather_comparisons

    sft = _jsonl(tmp_path / "sft.jsonl", [{"prompt": "p", "completion": "c"}])
    with pytest.raises(DataError, match=r"row 1: a comparison needs"):
        gather_comparisons([sft], tmp_path / "out")
    with pytest.raises(DataError, match="`sources`"):
        gather_comparisons([tmp_path / "round9/comparisons.jsonl"], tmp_path / "out")


# ---------------------------------------------------------------------------------------------------------------
# The launcher keeps the child's exit code and adds nothing
# ---------------------------------------------------------------------------------------------------------------
def test_the_launcher_reports_the_childs_exit_code():
    from types import SimpleNamespace

    from rlhf_recipes.launch import _child_exit_code

    assert _child_exit_code(subprocess.CalledProcessError(2, ["python", "recipes/sft.py"])) == 2
    assert _child_exit_code(subprocess.CalledProcessError(-15, ["python"])) == 143  # SIGTERM
    failures = {1: SimpleNamespace(exitcode=1, timestamp=20), 0: SimpleNamespace(exitcode=2, timestamp=10)}
    assert _child_exit_code(SimpleNamespace(failures=failures)) == 2  # the first rank to fail
    assert _child_exit_code(ValueError("a bug in the launcher itself")) is None


def _make(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`make` as a user runs it, with this interpreter's environment and no reinstall."""
    venv = Path(sys.executable).parent.parent
    return subprocess.run(["make", "--no-print-directory", "-o", f"{venv}/bin/rlhf-installed", f"VENV={venv}", *args],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)


def _assert_one_clean_error(result: subprocess.CompletedProcess, needle: str) -> None:
    err = result.stderr
    assert result.returncode == 2, err
    assert "Error 2" in err, err  # the command's own exit code, as make reports it (accelerate's was 1)
    assert "Traceback" not in err and "CalledProcessError" not in err and "RuntimeError" not in err, err
    assert err.count(needle) == 1, err  # said once


@pytest.mark.slow  # two interpreters import torch (the launcher, then the recipe): ~10 s of CPU
def test_make_stage_through_accelerate_prints_a_user_error_once_with_exit_code_2(tmp_path):
    missing = tmp_path / "no-base-model"
    result = _make("sft", "MODEL=demo", f"ARGS=--model_name_or_path {missing} --output_dir {tmp_path / 'sft'}")
    _assert_one_clean_error(result, f"'{missing}' is no such local folder")
    assert not (tmp_path / "sft").exists()


def test_make_plots_of_a_missing_run_exits_2_without_a_traceback(tmp_path):
    result = _make("plots", f"RUN={tmp_path / 'nope'}")
    _assert_one_clean_error(result, f"{tmp_path / 'nope'} does not exist")
