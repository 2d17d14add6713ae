"""Tiny stage runs shared by the artifact, publishing and reliability tests (built once per session, on demand)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from conftest import REPO, load_recipe

from rlhf_recipes.config import parse_recipe_args

_CACHE: dict[tuple, object] = {}


def sft_args(demo_dir: Path, output_dir: Path, *extra: str) -> list[str]:
    """A few SFT steps on small batches: seconds, not minutes."""
    return ["--config", str(REPO / "recipes/demo/sft.yaml"), "--model_name_or_path", str(demo_dir / "base"),
            "--dataset_name", str(demo_dir / "data/sft"), "--output_dir", str(output_dir),
            "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8", "--max_train_samples", "32",
            "--max_eval_samples", "8", "--logging_steps", "1", *extra]


def reward_model_dir(sft_dir: Path, root: Path) -> Path:
    """The SFT model with a fresh (seeded) scalar head, saved with its tokenizer: what PPO needs of an RM."""
    key = ("rm", sft_dir)
    if key not in _CACHE:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        out = root / "reward_model"
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(sft_dir, num_labels=1)
        model.save_pretrained(out)
        AutoTokenizer.from_pretrained(sft_dir).save_pretrained(out)
        _CACHE[key] = out
    return _CACHE[key]


@dataclass
class PPORun:
    output_dir: Path
    trainer: object  # the PPOTrainer, still holding the trained policy and value model
    metrics: dict


def run_recording_trainer(recipe: str, trainer_name: str, args: list[str]) -> tuple[dict, object]:
    """Run `recipes/<recipe>.py` in this process and return its metrics and the trainer it built."""
    module = load_recipe(recipe)
    made = []

    class Recording(getattr(module, trainer_name)):
        def __init__(self, *init_args, **kwargs):
            super().__init__(*init_args, **kwargs)
            made.append(self)

    setattr(module, trainer_name, Recording)
    metrics = module.main(*parse_recipe_args(module.DATACLASSES, args))
    assert len(made) == 1
    return metrics, made[0]


def ppo_run(demo_dir: Path, sft_dir: Path, root: Path, *extra: str) -> PPORun:
    """recipes/ppo.py for one update of 8 episodes (checkpoint-1 saved), keeping hold of its trainer."""
    key = ("ppo", demo_dir, sft_dir, extra)
    if key in _CACHE:
        return _CACHE[key]
    out = root / f"ppo-{len(_CACHE)}"
    args = ["--config", str(REPO / "recipes/demo/ppo.yaml"), "--sft_model_path", str(sft_dir),
            "--model_name_or_path", str(sft_dir), "--reward_model_path", str(reward_model_dir(sft_dir, root)),
            "--dataset_name", str(demo_dir / "data/prompts"), "--ptx_dataset", str(demo_dir / "data/ptx/train.jsonl"),
            "--output_dir", str(out), "--total_episodes", "8", "--per_device_train_batch_size", "4",
            "--num_mini_batches", "2", "--num_ppo_epochs", "1", "--response_length", "8",
            "--local_rollout_forward_batch_size", "8", "--ptx_batch_size", "2", "--save_strategy", "steps",
            "--save_steps", "1", "--max_train_samples", "16", "--max_eval_samples", "4",
            "--num_sample_generations", "0", *extra]
    metrics, trainer = run_recording_trainer("ppo", "PPOTrainer", args)
    _CACHE[key] = PPORun(out, trainer, metrics)
    return _CACHE[key]
