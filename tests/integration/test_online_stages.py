"""GRPO and RLOO (TRL's trainers behind our loaders, reward model and outputs) and best-of-n, a few steps each."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from conftest import REPO, run_recipe
from safetensors.torch import load_file
from stage_runs import reward_model_dir, run_recording_trainer
from transformers import AutoModelForSequenceClassification
from trl import ModelConfig

from rlhf_recipes.best_of_n import best_of_n
from rlhf_recipes.models import (
    load_model,
    load_tokenizer,
    read_reward_bias,
    reward_scores,
    score_responses,
    write_reward_bias,
)
from rlhf_recipes.online import RewardModelReward

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TEXTS = [("This film was", " a delight."), ("I expected little, and the plot", " was thin and slow and")]


@pytest.fixture(scope="module")
def rm_dir(sft_dir, tmp_path_factory):
    """The shared random-head reward model, with a normalisation bias that every score must include."""
    root = tmp_path_factory.mktemp("online-rm")
    path = shutil.copytree(reward_model_dir(sft_dir, root), root / "biased")  # the shared one stays unbiased
    write_reward_bias(path, 0.25)
    return path


@pytest.fixture(scope="module")
def tok(sft_dir):
    return load_tokenizer(str(sft_dir), padding_side="left")


def _ids(tok, eos_on_first: bool = True):
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p, _ in TEXTS]
    responses = [tok(r, add_special_tokens=False)["input_ids"] for _, r in TEXTS]
    if eos_on_first:
        responses[0] = responses[0] + [tok.eos_token_id]
    return prompts, responses


def test_reward_function_is_the_normalised_score_at_eos_minus_the_missing_eos_penalty(rm_dir, tok):
    model = AutoModelForSequenceClassification.from_pretrained(rm_dir, num_labels=1).eval()
    model.reward_bias = read_reward_bias(str(rm_dir))
    prompts, responses = _ids(tok)
    # Each sequence alone, no padding: the score head at its last token (the EOS for the first), plus the bias.
    with torch.no_grad():
        alone = [model(input_ids=torch.tensor([p + r])).logits[0, 0].item() + 0.25 for p, r in zip(prompts, responses)]
    reward = RewardModelReward(model, tok, missing_eos_penalty=1.5, batch_size=1)
    got = reward(prompts=[p for p, _ in TEXTS], completions=[r for _, r in TEXTS], completion_ids=responses)
    assert got == pytest.approx([alone[0], alone[1] - 1.5], abs=1e-5)  # the second never stopped: penalised
    batched = score_responses(model, prompts, responses, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    assert batched.tolist() == pytest.approx(alone, abs=1e-5)  # left padding in a batch of two changes nothing
    padded = torch.tensor([[tok.pad_token_id] * 3 + prompts[0] + responses[0]])
    assert reward_scores(model, padded, (padded != tok.pad_token_id).long()).item() == pytest.approx(alone[0], abs=1e-5)


def online_args(algo: str, demo_dir, sft_dir, rm_dir, out, *extra: str) -> list[str]:
    """The demo recipe of `algo` on the test demo's prompts, SFT policy and `rm_dir`, into `out`."""
    return ["--config", str(REPO / f"recipes/demo/{algo}.yaml"), "--sft_model_path", str(sft_dir),
            "--model_name_or_path", str(sft_dir), "--reward_model_path", str(rm_dir),
            "--dataset_name", str(demo_dir / "data/prompts"), "--output_dir", str(out), *extra]


@pytest.mark.parametrize("algo", ["grpo", "rloo"])
def test_online_stage_trains_scores_with_our_reward_model_and_saves_like_every_stage(algo, demo_dir, sft_dir, rm_dir,
                                                                                       tmp_path):
    out = tmp_path / algo
    trainer_name = {"grpo": "GRPOTrainer", "rloo": "RLOOTrainer"}[algo]
    args = online_args(algo, demo_dir, sft_dir, rm_dir, out, "--max_steps", "2", "--per_device_train_batch_size", "8",
                       "--num_generations", "4", "--max_completion_length", "8", "--max_train_samples", "16",
                       "--max_eval_samples", "4", "--save_strategy", "no", "--logging_steps", "1")
    metrics, trainer = run_recording_trainer(algo, trainer_name, args)

    # TRL called our reward function (not a model it scores itself) and logged finite rewards and KL.
    assert [type(f).__name__ for f in trainer.reward_funcs] == ["RewardModelReward"]
    logged = [log for log in trainer.state.log_history if "rewards/reward_model/mean" in log]
    assert len(logged) == 2 and all(math.isfinite(log["reward"]) and math.isfinite(log["kl"]) for log in logged)
    assert set(metrics) >= {"reward", "kl"} and all(math.isfinite(v) for v in metrics.values())

    # The policy moved away from the SFT weights.
    before, after = load_file(sft_dir / "model.safetensors"), load_file(out / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before if k in after)

    # The folder every stage writes: tokenizer with our pad token, metrics, data report, model card.
    assert load_tokenizer(str(out)).pad_token == "<|pad|>"
    assert json.loads((out / "stage_metrics.json").read_text())["stage"] == algo
    assert json.loads((out / "data_report.json").read_text())[0]["kept"] == 16
    card = (out / "README.md").read_text()
    assert f"TRL's {trainer_name}" in card and '"num_generations": 4' in card and "- " + algo in card


def test_online_stage_without_reward_model_is_a_clear_error(demo_dir, sft_dir, tmp_path):
    with pytest.raises(ValueError, match="reward_model_path"):
        run_recipe("grpo", ["--config", str(REPO / "recipes/demo/grpo.yaml"), "--sft_model_path", str(sft_dir),
                            "--reward_model_path", "", "--dataset_name", str(demo_dir / "data/prompts"),
                            "--output_dir", str(tmp_path)])


def test_best_of_n_keeps_the_reward_models_favourite(demo_dir, sft_dir, rm_dir, tmp_path):
    prompts = [json.loads(line)["prompt"] for line in (demo_dir / "data/prompts/test.jsonl").read_text().splitlines()][:6]
    margs = ModelConfig(model_name_or_path=str(sft_dir), dtype="float32")
    policy = load_model(margs, tok := load_tokenizer(str(sft_dir), padding_side="left"), apply_lora=False).eval()
    rm = load_model(margs, tok, kind="reward", model_name_or_path=str(rm_dir), apply_lora=False).eval()
    result = best_of_n(policy, rm, tok, prompts, n=4, response_length=8, seed=3, batch_size=8,
                       missing_eos_penalty=1.0)
    assert result.candidate_scores.shape == (6, 4)
    assert torch.equal(result.scores, result.candidate_scores.max(-1).values)  # the best, for every prompt
    assert result.scores.mean() > result.candidate_scores.mean()
    # Rescoring the chosen text independently gives its reward back (penalty included when it has no EOS).
    prompt_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    rescored = score_responses(rm, prompt_ids, result.response_ids, pad_token_id=tok.pad_token_id,
                               eos_token_id=tok.eos_token_id, missing_eos_penalty=1.0)
    assert rescored.tolist() == pytest.approx(result.scores.tolist(), abs=1e-5)


def test_best_of_n_recipe_writes_chosen_responses_and_metrics(demo_dir, sft_dir, rm_dir, tmp_path):
    metrics = run_recipe("best_of_n", ["--config", str(REPO / "recipes/demo/best_of_n.yaml"),
                                       "--model_name_or_path", str(sft_dir), "--policy_path", str(sft_dir),
                                       "--reward_model_path", str(rm_dir), "--dataset_name",
                                       str(demo_dir / "data/prompts"), "--output_dir", str(tmp_path), "--n", "4",
                                       "--num_prompts", "5", "--response_length", "8"])
    rows = [json.loads(line) for line in (tmp_path / "best_of_n.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and all(r["score"] == max(r["candidate_scores"]) for r in rows)
    # The labeler's score of each written prompt and chosen response, recomputed here, and their mean.
    from rlhf_recipes.demo.labeler import labeler_breakdown

    labeled = [labeler_breakdown(r["prompt"], r["response"])["total"] for r in rows]
    assert [r["labeler_score"] for r in rows] == pytest.approx(labeled, abs=1e-9)
    assert len(set(labeled)) > 1, "responses the labeler scores alike cannot show a wrong score"
    saved = json.loads((tmp_path / "best_of_n_metrics.json").read_text())
    assert saved["labeler_score"] == pytest.approx(sum(labeled) / len(labeled))
    assert saved == pytest.approx(metrics) and saved["kl"] == pytest.approx(math.log(4) - 0.75)
    assert saved["episodes"] == 20 and saved["rm_score_mean"] == pytest.approx(sum(r["score"] for r in rows) / 5)


def test_grpo_run_pushes_itself_with_our_card_and_no_pickles(demo_dir, sft_dir, rm_dir, tmp_path, monkeypatch):
    from hub_fakes import install_fake_hub

    monkeypatch.setenv("HF_TOKEN", "hf_fake_write_token_for_tests")
    fake_hub = install_fake_hub(monkeypatch)
    out = tmp_path / "grpo"
    run_recipe("grpo", online_args("grpo", demo_dir, sft_dir, rm_dir, out, "--max_steps", "1",
                                   "--per_device_train_batch_size", "4", "--num_generations", "4",
                                   "--max_completion_length", "4", "--max_train_samples", "8", "--save_strategy", "no",
                                   "--push_to_hub", "true", "--hub_model_id", "me/grpo-run"))
    assert set(fake_hub.repos) == {"me/grpo-run"} and fake_hub.errors == []
    final = fake_hub.commits[-1]
    assert final.message == "grpo: final model"
    assert {"README.md", "model.safetensors", "tokenizer.json", "stage_metrics.json"} <= set(final.files)
    assert final.files["README.md"] == (out / "README.md").read_bytes()
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in final.files)


def test_lora_grpo_trains_an_adapter_on_the_one_module_named(demo_dir, sft_dir, rm_dir, tmp_path):
    """LoRA is TRL's to apply, with our config: `--lora_target_modules c_attn` alone must adapt c_attn."""
    out = tmp_path / "grpo-lora"
    run_recipe("grpo", online_args("grpo", demo_dir, sft_dir, rm_dir, out, "--max_steps", "2",
                                   "--per_device_train_batch_size", "8", "--num_generations", "4",
                                   "--max_completion_length", "6", "--max_train_samples", "16", "--save_strategy", "no",
                                   "--use_peft", "true", "--lora_target_modules", "c_attn", "--lora_r", "4",
                                   "--lora_alpha", "8"))
    assert json.loads((out / "adapter_config.json").read_text())["target_modules"] == ["c_attn"]
    adapter = load_file(out / "adapter_model.safetensors")
    lora_b = [t for name, t in adapter.items() if "lora_B" in name]
    assert lora_b and all("c_attn" in name for name in adapter)
    assert any(t.abs().max() > 0 for t in lora_b)  # B starts at zero: non-zero means the adapter trained
