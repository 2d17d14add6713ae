"""Shared fixtures: everything runs offline on the embedded demo, built once per test session.

Set RLHF_TEST_DEMO_DIR to a folder to reuse the built demo across sessions while developing.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

REPO = Path(__file__).resolve().parents[1]
SHARED_HH = REPO.parent / "shared" / "data" / "hh-rlhf-harmless-base-sample.jsonl"
# A quarter of the real demo's pretraining: fluent enough for every stage to learn something, fast on 2 cores.
TEST_PRETRAIN_STEPS, TEST_PRETRAIN_BATCH = 150, 16


def accelerate_command() -> list[str]:
    """`accelerate launch` of this environment (the distributed tests' launcher); skips the test without it."""
    executable = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    if executable is None:
        pytest.skip("accelerate's launcher is not installed")
    return [executable, "launch"]


@pytest.fixture(scope="module")
def one_torch_thread():
    """Intra-op threads spin against each other on a small shared CPU (10x slower here); one is plenty for tests
    of small models. Use with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    from rlhf_recipes.demo.build import build_demo

    path = Path(os.environ.get("RLHF_TEST_DEMO_DIR") or tmp_path_factory.mktemp("demo"))
    return build_demo(path, pretrain_steps=TEST_PRETRAIN_STEPS, pretrain_batch_size=TEST_PRETRAIN_BATCH)


@pytest.fixture(scope="session")
def reward_head_dir(demo_dir, tmp_path_factory) -> Path:
    """The demo's base model with a fresh one-label head, saved as a reward model: the right kind for every
    `reward_model_path` (its scores are untrained), for tests that need one fast."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path_factory.mktemp("reward_head")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(demo_dir / "base", num_labels=1)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(demo_dir / "base").save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def hh_sample() -> Path:
    if not SHARED_HH.is_file():
        pytest.skip(f"the shared HH sample is not at {SHARED_HH} (it lives in ../shared/data beside the repo)")
    return SHARED_HH


def load_recipe(name: str):
    """Import `recipes/<name>.py` as a module (recipes are scripts, not a package)."""
    from rlhf_recipes.config import load_recipe_module

    return load_recipe_module(REPO / "recipes" / f"{name}.py")


def run_recipe(name: str, args: list[str]):
    """Parse `args` exactly as the command line would and run the recipe's main() in this process."""
    from rlhf_recipes.config import parse_recipe_args

    module = load_recipe(name)
    return module.main(*parse_recipe_args(module.DATACLASSES, args))


@pytest.fixture(scope="session")
def sft_dir(demo_dir, tmp_path_factory) -> Path:
    """A short SFT run on the demo, shared by the reward and PPO tests."""
    out = tmp_path_factory.mktemp("sft")
    run_recipe("sft", ["--config", str(REPO / "recipes/demo/sft.yaml"),
                       "--model_name_or_path", str(demo_dir / "base"),
                       "--dataset_name", str(demo_dir / "data/sft"),
                       "--output_dir", str(out), "--max_steps", "30", "--save_strategy", "no",
                       "--max_eval_samples", "64"])
    return out
