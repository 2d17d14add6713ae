"""Chat templates through every stage: tiny Llama-3- and Qwen2-shaped models (built offline, `chat_models.py`) run
SFT, reward and PPO on conversational data, and each stage must train on the template's rendering: one BOS, the
prompt ending at the generation prompt, the end-of-turn token as EOS (appended once by SFT, where PPO stops, where the
reward model reads its score)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from chat_models import FAMILIES, save_chat_model
from conftest import REPO, load_recipe

from rlhf_recipes.config import parse_recipe_args
from rlhf_recipes.data import read_jsonl, resolve_template
from rlhf_recipes.models import load_tokenizer
from rlhf_recipes.reward.trainer import last_token_index, position_ids_from_mask

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _first_sentence(text: str) -> str:
    return re.split(r"(?<=[.!?])\s", text.strip())[0]


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture(scope="module")
def chat_data(demo_dir, tmp_path_factory) -> Path:
    """The demo's reviews as conversations: `messages` for SFT and PPO, conversational pairs for the reward model
    (`prompt` turns, `chosen`/`rejected` assistant turns: TRL's layout). Replies are one sentence, so a few SFT steps
    teach the model to end its turn."""
    root = tmp_path_factory.mktemp("chat-data")
    for split, n in (("train", 64), ("test", 8)):
        sft = read_jsonl(demo_dir / f"data/sft/{split}.jsonl")[:n]
        _write(root / f"sft/{split}.jsonl", [{"messages": [
            {"role": "user", "content": f"Continue the review: {row['prompt']}"},
            {"role": "assistant", "content": _first_sentence(row["completion"])}]} for row in sft])
        ranked = read_jsonl(demo_dir / f"data/reward/{split}.jsonl")[:n]
        _write(root / f"reward/{split}.jsonl", [{
            "prompt": [{"role": "user", "content": f"Continue the review: {row['prompt']}"}],
            "chosen": [{"role": "assistant", "content": _first_sentence(row["responses"][0])}],
            "rejected": [{"role": "assistant", "content": _first_sentence(row["responses"][-1])}]} for row in ranked])
        prompts = read_jsonl(demo_dir / f"data/prompts/{split}.jsonl")[:n]
        _write(root / f"prompts/{split}.jsonl", [{"messages": [
            {"role": "user", "content": f"Continue the review: {row['prompt']}"}]} for row in prompts])
    return root


def run_stage(recipe: str, trainer_name: str, args: list[str]) -> dict:
    """Run `recipes/<recipe>.py` in this process; keep the trainer and, for PPO, every batch of experience."""
    module = load_recipe(recipe)
    seen: dict = {"experiences": []}

    class Recording(getattr(module, trainer_name)):
        def __init__(self, *init_args, **kwargs):
            super().__init__(*init_args, **kwargs)
            seen["trainer"] = self

        if trainer_name == "PPOTrainer":
            def make_experience(self, queries):
                experience = super().make_experience(queries)
                seen["experiences"].append(experience)
                return experience

    setattr(module, trainer_name, Recording)
    seen["metrics"] = module.main(*parse_recipe_args(module.DATACLASSES, args))
    return seen


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pipeline(request, demo_dir, chat_data, tmp_path_factory) -> dict:
    family = request.param
    root = tmp_path_factory.mktemp(f"chat-{family}")
    base = save_chat_model(family, demo_dir, root / "base")
    common = ["--per_device_eval_batch_size", "8", "--max_eval_samples", "8", "--save_strategy", "no",
              "--report_to", "none", "--disable_tqdm", "true"]
    sft = run_stage("sft", "SFTTrainer", [
        "--config", str(REPO / "recipes/demo/sft.yaml"), "--model_name_or_path", str(base),
        "--dataset_name", str(chat_data / "sft"), "--dataset_format", "messages", "--output_dir", str(root / "sft"),
        "--max_steps", "40", "--per_device_train_batch_size", "16", "--learning_rate", "3e-3", "--warmup_steps", "0",
        *common])
    reward = run_stage("reward", "RewardTrainer", [
        "--config", str(REPO / "recipes/demo/reward.yaml"), "--model_name_or_path", str(root / "sft"),
        "--dataset_name", str(chat_data / "reward"), "--dataset_format", "preference",
        "--normalization_dataset", str(chat_data / "sft"), "--normalization_samples", "16",
        "--output_dir", str(root / "reward"), "--max_steps", "4", "--per_device_train_batch_size", "8", *common])
    ppo = run_stage("ppo", "PPOTrainer", [
        "--config", str(REPO / "recipes/demo/ppo.yaml"), "--model_name_or_path", str(root / "sft"),
        "--sft_model_path", str(root / "sft"), "--reward_model_path", str(root / "reward"),
        "--dataset_name", str(chat_data / "prompts"), "--dataset_format", "messages",
        "--ptx_dataset", str(chat_data / "sft/train.jsonl"), "--ptx_batch_size", "2",
        "--output_dir", str(root / "ppo"), "--total_episodes", "32", "--per_device_train_batch_size", "8",
        "--num_mini_batches", "2", "--num_ppo_epochs", "1", "--response_length", "24",
        "--local_rollout_forward_batch_size", "16", "--num_sample_generations", "0", *common])
    tokenizer = load_tokenizer(str(root / "sft"))
    return {"family": family, "root": root, "sft": sft, "reward": reward, "ppo": ppo, "tokenizer": tokenizer,
            "template": resolve_template(tokenizer), "data": chat_data, "spec": FAMILIES[family]}


def _assert_one_bos(ids: list[int], pipeline: dict) -> None:
    bos = pipeline["spec"]["bos"]
    if bos is not None:  # written by the template and added by the tokenizer: exactly one must survive
        bos_id = pipeline["tokenizer"].convert_tokens_to_ids(bos)
        assert ids[0] == bos_id and ids.count(bos_id) == 1


def test_the_end_of_turn_token_becomes_eos_in_every_stage(pipeline):
    eot = pipeline["spec"]["end_of_turn"]
    tokenizer = pipeline["tokenizer"]
    assert pipeline["template"].name == "chat_template" and pipeline["template"].end_of_turn == eot
    assert tokenizer.eos_token == eot and tokenizer.pad_token_id != tokenizer.eos_token_id
    eot_id = tokenizer.convert_tokens_to_ids(eot)
    for stage in ("sft", "reward", "ppo"):
        saved = json.loads((pipeline["root"] / stage / "config.json").read_text())
        assert saved["eos_token_id"] == eot_id, stage
    assert pipeline["ppo"]["trainer"].stop_token_id == eot_id


def test_sft_trains_on_the_chat_template_rendering(pipeline):
    tokenizer, template = pipeline["tokenizer"], pipeline["template"]
    eot_id = tokenizer.eos_token_id
    trainer = pipeline["sft"]["trainer"]
    rows = read_jsonl(pipeline["data"] / "sft/train.jsonl")
    assert len(trainer.train_dataset) == len(rows)
    for row, example in zip(rows[:16], trainer.train_dataset.select(range(16))):
        prompt, completion = template.render_conversation(row["messages"])
        assert completion.endswith(template.end_of_turn) and completion.count(template.end_of_turn) == 1
        ids, labels = example["input_ids"], example["labels"]
        assert tokenizer.decode(ids) == prompt + completion  # no second EOS, no template text lost
        _assert_one_bos(ids, pipeline)
        trained = [token for token in labels if token != -100]
        assert tokenizer.decode(trained) == completion  # the loss covers the reply and its end of turn only
        assert ids[-1] == eot_id and trained.count(eot_id) == 1
    metrics = pipeline["sft"]["metrics"]
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"]


def test_reward_model_trains_on_and_scores_at_the_end_of_turn(pipeline):
    tokenizer, template = pipeline["tokenizer"], pipeline["template"]
    trainer = pipeline["reward"]["trainer"]
    rows = read_jsonl(pipeline["data"] / "reward/train.jsonl")
    column = "responses_ids" if "responses_ids" in trainer.train_dataset.column_names else None
    for row, example in zip(rows[:8], trainer.train_dataset.select(range(8))):
        sequences = example[column] if column else [example["chosen_ids"], example["rejected_ids"]]
        for side, ids in zip(("chosen", "rejected"), sequences):
            prompt, reply = template.render_conversation(row["prompt"] + row[side])
            assert tokenizer.decode(ids) == prompt + reply  # exactly what SFT trained the policy to produce
            _assert_one_bos(ids, pipeline)
            assert ids[-1] == tokenizer.eos_token_id and ids.count(tokenizer.eos_token_id) == 1 + prompt.count(
                template.end_of_turn)
    metrics = pipeline["reward"]["metrics"]
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values() if isinstance(v, float))
    assert (pipeline["root"] / "reward/reward_normalization.json").is_file()


def test_ppo_prompts_end_at_the_generation_prompt_and_responses_stop_at_the_end_of_turn(pipeline):
    tokenizer, template = pipeline["tokenizer"], pipeline["template"]
    trainer = pipeline["ppo"]["trainer"]
    eot_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    rows = read_jsonl(pipeline["data"] / "prompts/train.jsonl")
    for row, example in zip(rows[:8], trainer.train_dataset.select(range(8))):
        rendered = template.render_prompt(row["messages"])
        assert tokenizer.decode(example["input_ids"]) == rendered
        assert rendered.endswith(row["messages"][-1]["content"] + pipeline["spec"]["generation_prompt"])
        _assert_one_bos(example["input_ids"], pipeline)

    experiences = pipeline["ppo"]["experiences"]
    responses = torch.cat([e["responses"] for e in experiences])
    ended = (responses == eot_id).any(-1)
    assert ended.any(), "SFT should have taught the policy to end some turns within 24 tokens"
    first = torch.where(responses == eot_id, torch.arange(responses.shape[1]), responses.shape[1]).min(-1).values
    after = torch.arange(responses.shape[1])[None, :] > first[:, None]
    assert (responses[after] == pad_id).all()  # nothing after the end of turn but padding
    for e in experiences:  # the missing-EOS penalty hits exactly the responses that never ended their turn
        missing = ~(e["responses"] == eot_id).any(-1)
        assert torch.allclose(e["raw_scores"] - e["scores"], missing.float() * trainer.args.missing_eos_penalty)

    # The reward is read at the end-of-turn token: the scalar head applied at that position, not at another.
    e = experiences[0]
    rows_ended = (e["responses"] == eot_id).any(-1)
    qr, mask = e["query_responses"][rows_ended], e["attention_mask"][rows_ended]
    last = last_token_index(mask)
    assert (qr[torch.arange(len(qr)), last] == eot_id).all()
    reward_model = trainer.reward_model
    with torch.no_grad():
        hidden = reward_model.model(input_ids=qr, attention_mask=mask,
                                    position_ids=position_ids_from_mask(mask)).last_hidden_state
        per_position = reward_model.score(hidden).squeeze(-1) + reward_model.reward_bias
    at_eot = per_position[torch.arange(len(qr)), last]
    torch.testing.assert_close(at_eot, e["raw_scores"][rows_ended], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(at_eot, per_position[torch.arange(len(qr)), last - 1], atol=1e-4)
