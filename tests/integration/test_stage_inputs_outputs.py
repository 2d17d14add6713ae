"""Every input checked before a model loads, and a finished stage never trained over unasked, on the real recipes.

`load_model` is replaced by one that fails the test: an input error must come before any model is loaded (the bug
these tests name: a reward model trained and evaluated, then stopped by its normalisation set).
"""

from __future__ import annotations

import json

import pytest
from conftest import REPO, load_recipe
from stage_runs import reward_model_dir, sft_args

from rlhf_recipes.config import parse_recipe_args
from rlhf_recipes.data import DataError
from rlhf_recipes.outputs import OutputExistsError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_checked(recipe: str, args: list[str], load_models: bool = False):
    """The recipe's main() as the command line runs it; unless `load_models`, loading a model fails the test."""
    module = load_recipe(recipe)
    if not load_models:
        def no_model(*_, **__):
            raise AssertionError(f"recipes/{recipe}.py loaded a model before its inputs were checked")

        module.load_model = no_model
    return module.main(*parse_recipe_args(module.DATACLASSES, args))


def test_reward_stops_on_its_normalisation_set_before_training(demo_dir, sft_dir, tmp_path):
    out = tmp_path / "reward"
    args = ["--config", str(REPO / "recipes/demo/reward.yaml"), "--model_name_or_path", str(sft_dir),
            "--dataset_name", str(demo_dir / "data/reward"), "--output_dir", str(out), "--max_train_samples", "16",
            "--max_eval_samples", "8", "--normalization_dataset", "Anthropic/hh-rlhf"]  # a Hub id, offline
    with pytest.raises(DataError) as err:
        run_checked("reward", args)
    message = str(err.value)
    assert "`normalization_dataset`" in message and "`dataset_name`" not in message, message
    assert not list(out.glob("checkpoint-*")) and not (out / "config.json").exists()
    assert not (out / "README.md").exists()  # no model card for a model that was never trained


def test_ppo_names_ptx_dataset(demo_dir, sft_dir, tmp_path):
    args = ["--config", str(REPO / "recipes/demo/ppo.yaml"), "--sft_model_path", str(sft_dir),
            "--model_name_or_path", str(sft_dir), "--reward_model_path", str(reward_model_dir(sft_dir, tmp_path)),
            "--dataset_name", str(demo_dir / "data/prompts"), "--ptx_dataset", str(tmp_path / "ptx/train.jsonl"),
            "--output_dir", str(tmp_path / "ppo"), "--max_train_samples", "8", "--max_eval_samples", "4"]
    with pytest.raises(DataError) as err:
        run_checked("ppo", args)
    assert "`ptx_dataset`" in str(err.value) and "`dataset_name`" not in str(err.value), str(err.value)


def test_a_finished_stage_is_refused_then_replaced_whole_when_asked(demo_dir, tmp_path):
    out = tmp_path / "sft"
    first = run_checked("sft", sft_args(demo_dir, out, "--max_steps", "2", "--save_strategy", "steps",
                                        "--save_steps", "1"), load_models=True)
    assert "eval_loss_after" in first and {p.name for p in out.glob("checkpoint-*")} == {"checkpoint-1",
                                                                                         "checkpoint-2"}
    saved = (out / "stage_metrics.json").read_text()
    weights = (out / "model.safetensors").stat().st_mtime_ns

    # The same command again: refused before anything loads, the finished stage untouched.
    with pytest.raises(OutputExistsError, match="--overwrite_output_dir true"):
        run_checked("sft", sft_args(demo_dir, out, "--max_steps", "2"))
    assert (out / "stage_metrics.json").read_text() == saved and (out / "model.safetensors").stat().st_mtime_ns \
        == weights

    # Asked to: the old stage is moved aside whole, the new folder holds the new run only (no evaluation this time,
    # no checkpoints), so nothing of the old run's metrics or checkpoints is read as the new one's.
    second = run_checked("sft", sft_args(demo_dir, out, "--max_steps", "2", "--dataset_test_split", "none",
                                         "--save_strategy", "no", "--overwrite_output_dir", "true"), load_models=True)
    metrics = json.loads((out / "stage_metrics.json").read_text())
    assert metrics == {"stage": "sft", **second} and "eval_loss_after" not in metrics
    assert not list(out.glob("checkpoint-*"))
    (previous,) = tmp_path.glob("sft.previous-*")
    assert (previous / "stage_metrics.json").read_text() == saved and (previous / "checkpoint-2").is_dir()
