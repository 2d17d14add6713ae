"""The chat-template path under `accelerate launch` with 2 CPU processes and DeepSpeed ZeRO-3: the tiny Qwen2-shaped
model (ChatML, like SmolLM2) through SFT, reward and PPO, each stage checked as in the single-process test
(`tests/integration/test_chat_templates.py`) on what every process's trainer was fed."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from chat_models import check_ppo, check_reward, check_sft, save_chat_model, write_chat_data
from conftest import REPO, accelerate_command

from rlhf_recipes.models import load_tokenizer

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
FAMILY = "qwen2"


def launch(root: Path, data: Path) -> None:
    """SFT, reward and PPO one after another in one 2-process launch (`tests/chat_stage_runner.py`)."""
    pytest.importorskip("deepspeed")
    command = [*accelerate_command(), "--config_file", str(REPO / "accelerate_configs/deepspeed_zero3.yaml"),
               "--num_processes", "2", "--mixed_precision", "no", str(REPO / "tests/chat_stage_runner.py"),
               str(root), str(data), "--ddp_backend", "gloo"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"accelerate launch failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"


@pytest.mark.timeout(900)
def test_chat_template_stages_under_deepspeed_zero3(demo_dir, tmp_path):
    data = write_chat_data(demo_dir, tmp_path / "data")
    save_chat_model(FAMILY, demo_dir, tmp_path / "base")
    launch(tmp_path, data)
    for stage, check in (("sft", check_sft), ("reward", check_reward), ("ppo", check_ppo)):
        tokenizer = load_tokenizer(str(tmp_path / stage))
        assert tokenizer.eos_token == "<|im_end|>"
        fed = [json.loads((tmp_path / f"fed-{stage}.rank{rank}.json").read_text()) for rank in (0, 1)]
        for rank_fed in fed if stage == "ppo" else fed[:1]:  # each process rolled out its own prompts
            check(rank_fed, data, tokenizer, FAMILY)
    ppo_state = json.loads((tmp_path / "fed-ppo.rank0.json").read_text())
    assert ppo_state["metrics"], "PPO logged its objective"
