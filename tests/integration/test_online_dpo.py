"""Online DPO: TRL's experimental trainer with our reward model as the judge of each sampled pair, a few steps."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from conftest import REPO
from safetensors.torch import load_file
from stage_runs import reward_model_dir, run_recording_trainer

from rlhf_recipes.models import score_responses, write_reward_bias
from rlhf_recipes.online import RewardModelReward
from rlhf_recipes.online.online_dpo import cut_after_eos

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(demo_dir, sft_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("online-dpo")
    rm_dir = shutil.copytree(reward_model_dir(sft_dir, root), root / "biased")
    write_reward_bias(rm_dir, 0.25)
    out = root / "run"
    args = ["--config", str(REPO / "recipes/demo/online_dpo.yaml"), "--sft_model_path", str(sft_dir),
            "--model_name_or_path", str(sft_dir), "--reward_model_path", str(rm_dir),
            "--dataset_name", str(demo_dir / "data/prompts"), "--output_dir", str(out), "--max_steps", "2",
            "--per_device_train_batch_size", "4", "--max_new_tokens", "8", "--max_train_samples", "16",
            "--max_eval_samples", "4", "--save_strategy", "no", "--logging_steps", "1"]
    metrics, trainer = run_recording_trainer("online_dpo", "OnlineDPOTrainer", args)
    return metrics, trainer, out


def test_online_dpo_trains_against_our_reward_model_and_saves_like_every_stage(trained, sft_dir):
    metrics, trainer, out = trained
    assert [type(f).__name__ for f in trainer.reward_funcs] == ["RewardModelReward"]
    assert trainer.reward_funcs[0].missing_eos_penalty is None  # TRL subtracts it once, from its own field
    assert trainer.args.missing_eos_penalty == 1.0
    logged = [log for log in trainer.state.log_history if "objective/scores" in log]
    assert len(logged) == 2 and all(math.isfinite(log["objective/kl"]) for log in logged)
    assert all(log["objective/scores_margin"] >= 0 for log in logged)  # the chosen side is the RM's favourite
    assert set(metrics) >= {"objective/scores", "objective/kl"}
    before, after = load_file(sft_dir / "model.safetensors"), load_file(out / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before if k in after)
    assert json.loads((out / "stage_metrics.json").read_text())["stage"] == "online_dpo"
    assert "- online_dpo" in (out / "README.md").read_text()


def test_a_padded_completion_is_scored_at_its_eos_like_ppo(trained):
    _, trainer, _ = trained
    tok = trainer.processing_class
    reward: RewardModelReward = trainer.reward_funcs[0]
    prompt = "This film was"
    reply = tok(" a delight.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    padded = reply + [tok.pad_token_id] * 3  # as TRL hands completions over
    assert cut_after_eos(padded, trainer.eos_token_ids) == reply
    got = trainer._calculate_rewards_from_functions([prompt], [tok.decode(reply)], [padded])
    expected = score_responses(reward.model, [tok(prompt, add_special_tokens=False)["input_ids"]], [reply],
                               pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    assert got.tolist() == pytest.approx(expected.tolist(), abs=1e-5)


def test_log_probs_of_a_left_padded_batch_equal_each_row_alone(trained):
    _, trainer, _ = trained
    tok, model = trainer.processing_class, trainer.model.eval()
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in ("A", "I expected little, and the plot")]
    completion = tok(" was thin.", add_special_tokens=False)["input_ids"]
    width = max(map(len, prompts))
    prompt_ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    prompt_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    completion_ids = torch.tensor([completion] * 2)
    with torch.no_grad():
        batched = trainer._forward(model, prompt_ids, prompt_mask, completion_ids, torch.ones_like(completion_ids))
        for row, prompt in enumerate(prompts):
            alone = trainer._forward(model, torch.tensor([prompt]), torch.ones(1, len(prompt), dtype=torch.long),
                                     completion_ids[:1], torch.ones_like(completion_ids[:1]))
            assert batched[row].tolist() == pytest.approx(alone[0].tolist(), abs=1e-4)
