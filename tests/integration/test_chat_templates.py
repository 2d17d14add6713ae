"""Chat templates through every stage: tiny Llama-3- and Qwen2-shaped models (built offline, `chat_models.py`) run
SFT, reward and PPO on conversational data, and each stage must train on the template's rendering: one BOS, the
prompt ending at the generation prompt, the end-of-turn token as EOS (appended once by SFT, where PPO stops, where the
reward model reads its score)."""

from __future__ import annotations

import json
import math

import pytest
from chat_models import (
    FAMILIES,
    check_ppo,
    check_reward,
    check_sft,
    run_stage,
    save_chat_model,
    stage_args,
    write_chat_data,
)
from conftest import run_recipe

from rlhf_recipes.data import read_jsonl, resolve_template
from rlhf_recipes.models import load_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def chat_data(demo_dir, tmp_path_factory):
    return write_chat_data(demo_dir, tmp_path_factory.mktemp("chat-data"))


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pipeline(request, demo_dir, chat_data, tmp_path_factory) -> dict:
    family = request.param
    root = tmp_path_factory.mktemp(f"chat-{family}")
    save_chat_model(family, demo_dir, root / "base")
    fed = {stage: run_stage(stage, stage_args(stage, root, chat_data)) for stage in ("sft", "reward", "ppo")}
    return {"family": family, "root": root, "fed": fed, "data": chat_data, "tokenizer": load_tokenizer(str(root / "sft"))}


def test_the_end_of_turn_token_becomes_eos_in_every_stage(pipeline):
    eot = FAMILIES[pipeline["family"]]["end_of_turn"]
    tokenizer = pipeline["tokenizer"]
    template = resolve_template(tokenizer)
    assert template.name == "chat_template" and template.end_of_turn == eot
    assert tokenizer.eos_token == eot and tokenizer.pad_token_id != tokenizer.eos_token_id
    for stage in ("sft", "reward", "ppo"):
        saved = json.loads((pipeline["root"] / stage / "config.json").read_text())
        assert saved["eos_token_id"] == tokenizer.convert_tokens_to_ids(eot), stage
        assert load_tokenizer(str(pipeline["root"] / stage)).eos_token == eot, stage


def test_sft_trains_on_the_chat_template_rendering(pipeline):
    fed = pipeline["fed"]["sft"]
    check_sft(fed, pipeline["data"], pipeline["tokenizer"], pipeline["family"])
    assert fed["metrics"]["eval_loss_after"] < fed["metrics"]["eval_loss_before"]


def test_reward_model_trains_on_what_the_policy_produces_and_scores_at_the_end_of_turn(pipeline):
    fed = pipeline["fed"]["reward"]
    check_reward(fed, pipeline["data"], pipeline["tokenizer"], pipeline["family"])
    assert math.isfinite(fed["metrics"]["train_loss"])
    assert (pipeline["root"] / "reward/reward_normalization.json").is_file()


def test_ppo_prompts_end_at_the_generation_prompt_and_responses_stop_at_the_end_of_turn(pipeline):
    check_ppo(pipeline["fed"]["ppo"], pipeline["data"], pipeline["tokenizer"], pipeline["family"])


def test_evaluation_samples_from_the_rendered_prompt_and_stops_at_the_end_of_turn(pipeline):
    root, tokenizer = pipeline["root"], pipeline["tokenizer"]
    rows = run_recipe("evaluate", [
        "--dataset_name", str(pipeline["data"] / "prompts"), "--dataset_format", "messages",
        "--policy_paths", str(root / "sft"), str(root / "ppo"), "--policy_names", "sft", "ppo",
        "--reward_model_path", str(root / "reward"), "--output_dir", str(root / "eval"), "--num_prompts", "8",
        "--response_length", "24", "--batch_size", "8"])
    template = resolve_template(tokenizer)
    results = json.loads((root / "eval/eval_results.json").read_text())
    expected = [template.render_prompt(r["messages"]) for r in read_jsonl(pipeline["data"] / "prompts/test.jsonl")]
    assert results["prompts"] == expected[: len(results["prompts"])]
    # eos_fraction counts responses that ended with the end-of-turn token; SFT taught the policy to end its turns.
    assert any(row["eos_fraction"] > 0 for row in rows)
    assert all(math.isfinite(row["rm_score_mean"]) for row in rows)


def test_chat_and_sampling_tools_render_with_the_template_and_stop_at_the_end_of_turn(pipeline):
    from rlhf_recipes.config import ScriptArguments
    from rlhf_recipes.feedback.chat import load_chat_policy
    from rlhf_recipes.feedback.sampling import SampleArguments, load_prompts, sample_distinct

    tokenizer = pipeline["tokenizer"]
    template, eos = resolve_template(tokenizer), tokenizer.eos_token_id
    policy = load_chat_policy(str(pipeline["root"] / "sft"), max_new_tokens=24, temperature=1.0, top_p=1.0)
    messages = [{"role": "user", "content": "Continue the review: The new drama by Mary Ward was"}]
    assert policy.tokenizer.eos_token == template.end_of_turn
    assert policy.render(messages) == template.render_prompt(messages)
    answers = sample_distinct(policy.model, policy.tokenizer, [policy.render(messages)] * 4, k=2, max_new_tokens=24,
                              temperature=1.0, top_p=1.0, max_attempts=1)
    stopped = [a for row in answers for a in row if eos in a]
    assert stopped and all(a[-1] == eos and a.count(eos) == 1 for a in stopped)
    assert all(template.end_of_turn not in reply for reply in policy.replies(messages, k=2))

    prompts, _ = load_prompts(ScriptArguments(dataset_name=str(pipeline["data"] / "prompts"),
                                              dataset_format="messages"), SampleArguments(), tokenizer, None)
    rows = read_jsonl(pipeline["data"] / "prompts/train.jsonl")
    assert set(prompts) <= {template.render_prompt(row["messages"]) for row in rows}
