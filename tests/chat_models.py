"""Tiny Llama-3- and Qwen2-shaped checkpoints with chat templates, built offline from config for tests.

The demo's byte-level BPE gets each family's special tokens and a chat template in its style: Llama 3's headers,
`<|eot_id|>` and a BOS that both the template writes and the tokenizer adds (the double-BOS trap), and Qwen2's
ChatML with a default system turn and `<|im_end|>`. The models have 2 layers of width 64.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from conftest import REPO
from tokenizers.processors import TemplateProcessing
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from rlhf_recipes.data import read_jsonl, resolve_template
from rlhf_recipes.ppo.core import short_response_penalty

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
FAMILIES = {
    "llama3": {"end_of_turn": "<|eot_id|>", "bos": "<|begin_of_text|>",
               "generation_prompt": "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
               "special": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                           "<|eot_id|>"]},
    "qwen2": {"end_of_turn": "<|im_end|>", "bos": None, "generation_prompt": "<|im_end|>\n<|im_start|>assistant\n",
              "special": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]},
}


def save_chat_model(family: str, demo_dir: Path, folder: Path, seed: int = 0) -> Path:
    """Save a tokenizer with `family`'s chat template and a random 2-layer model of that architecture."""
    spec = FAMILIES[family]
    tokenizer = AutoTokenizer.from_pretrained(demo_dir / "base")
    tokenizer.add_special_tokens({"additional_special_tokens": spec["special"]})
    if family == "llama3":
        # Llama 3's tokenizer ships eos <|end_of_text|> (the instruct template ends turns with <|eot_id|>) and adds
        # its BOS to every encoding, while the template also writes it.
        tokenizer.bos_token, tokenizer.eos_token = "<|begin_of_text|>", "<|end_of_text|>"
        tokenizer.chat_template = LLAMA3_TEMPLATE
        bos_id = tokenizer.convert_tokens_to_ids("<|begin_of_text|>")
        tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
            single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B", special_tokens=[("<|begin_of_text|>", bos_id)])
        config_class, model_class = LlamaConfig, LlamaForCausalLM
    else:
        tokenizer.eos_token = "<|endoftext|>"  # the base model's EOS; the loader switches to <|im_end|>
        tokenizer.chat_template = CHATML_TEMPLATE
        config_class, model_class = Qwen2Config, Qwen2ForCausalLM
    tokenizer.model_max_length = 256
    config = config_class(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                          tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    model_class(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------------------------------------------
# Conversational data, and what each stage's trainer was fed
# ----------------------------------------------------------------------------------------------------------------
def _first_sentence(text: str) -> str:
    return re.split(r"(?<=[.!?])\s", text.strip())[0]


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def write_chat_data(demo_dir: Path, root: Path, n_train: int = 64, n_test: int = 8) -> Path:
    """The demo's reviews as conversations: `messages` for SFT and PPO, conversational pairs for the reward model
    (`prompt` turns, `chosen`/`rejected` assistant turns: TRL's layout). Replies are one sentence, so a few SFT steps
    teach the model to end its turn."""
    for split, n in (("train", n_train), ("test", n_test)):
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


def stage_args(stage: str, family_root: Path, data: Path) -> list[str]:
    """A few steps of `stage` on the chat data: base -> sft -> reward -> ppo under `family_root`."""
    common = ["--per_device_eval_batch_size", "8", "--max_eval_samples", "8", "--save_strategy", "no",
              "--report_to", "none", "--disable_tqdm", "true", "--output_dir", str(family_root / stage)]
    if stage == "sft":
        return ["--config", str(REPO / "recipes/demo/sft.yaml"), "--model_name_or_path", str(family_root / "base"),
                "--dataset_name", str(data / "sft"), "--dataset_format", "messages", "--max_steps", "20",
                "--per_device_train_batch_size", "16", "--learning_rate", "5e-3", "--warmup_steps", "0", *common]
    if stage == "reward":
        return ["--config", str(REPO / "recipes/demo/reward.yaml"), "--model_name_or_path", str(family_root / "sft"),
                "--dataset_name", str(data / "reward"), "--dataset_format", "preference",
                "--normalization_dataset", str(data / "sft"), "--normalization_samples", "16", "--max_steps", "4",
                "--per_device_train_batch_size", "8", *common]
    return ["--config", str(REPO / "recipes/demo/ppo.yaml"), "--model_name_or_path", str(family_root / "sft"),
            "--sft_model_path", str(family_root / "sft"), "--reward_model_path", str(family_root / "reward"),
            "--dataset_name", str(data / "prompts"), "--dataset_format", "messages",
            "--ptx_dataset", str(data / "sft/train.jsonl"), "--ptx_batch_size", "2", "--total_episodes", "32",
            "--per_device_train_batch_size", "8", "--num_mini_batches", "2", "--num_ppo_epochs", "1",
            "--response_length", "24", "--local_rollout_forward_batch_size", "16", "--num_sample_generations", "0",
            "--missing_eos_penalty", "1.0",  # the demo's is 0; the check below needs one to see where it lands
            *common]


TRAINERS = {"sft": "SFTTrainer", "reward": "RewardTrainer", "ppo": "PPOTrainer"}


def run_stage(stage: str, args: list[str]) -> dict:
    """Run `recipes/<stage>.py` in this process and return what its trainer was fed, as plain lists:
    sft `examples` (input_ids, labels); reward `examples` (the token sequences of each comparison); ppo `prompts`
    (input_ids), `stop_token_id` and per update the rollout (`responses`, `query_responses`, `attention_mask`,
    `raw_scores`, `scores`) plus `scores_without_last`: the RM's scores with each sequence's last token masked out."""
    from rlhf_recipes.config import load_recipe_module, parse_recipe_args
    from rlhf_recipes.models import reward_scores

    module = load_recipe_module(REPO / "recipes" / f"{stage}.py")
    fed: dict = {"experiences": []}

    class Recording(getattr(module, TRAINERS[stage])):
        def __init__(self, *init_args, **kwargs):
            super().__init__(*init_args, **kwargs)
            rows = self.train_dataset.select(range(min(16, len(self.train_dataset))))
            if stage == "sft":
                fed["examples"] = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows]
            elif stage == "reward":
                fed["examples"] = [r["responses_ids"] if "responses_ids" in r else [r["chosen_ids"], r["rejected_ids"]]
                                   for r in rows]
            else:
                fed["prompts"] = [r["input_ids"] for r in rows]
                fed["stop_token_id"] = self.stop_token_id

        if stage == "ppo":
            def make_experience(self, queries):
                experience = super().make_experience(queries)
                mask = experience["attention_mask"].clone()
                last = mask.shape[1] - 1 - mask.flip(-1).argmax(-1)
                mask[torch.arange(len(mask)), last] = 0
                without_last = reward_scores(self.reward_model, experience["query_responses"], mask)
                fed["experiences"].append({
                    **{k: experience[k].tolist() for k in ("responses", "query_responses", "attention_mask",
                                                           "raw_scores", "scores")},
                    "scores_without_last": without_last.tolist(),
                    "missing_eos_penalty": self.args.missing_eos_penalty,
                    "min_response_length": self.args.min_response_length,
                    "short_response_penalty": self.args.short_response_penalty})
                return experience

    setattr(module, TRAINERS[stage], Recording)
    fed["metrics"] = module.main(*parse_recipe_args(module.DATACLASSES, args))
    return fed


# ----------------------------------------------------------------------------------------------------------------
# Checks: the text each stage trained on is the template's rendering
# ----------------------------------------------------------------------------------------------------------------
def _assert_one_bos(ids: list[int], tokenizer, family: str) -> None:
    bos = FAMILIES[family]["bos"]
    if bos is not None:  # written by the template and added by the tokenizer: exactly one must survive
        bos_id = tokenizer.convert_tokens_to_ids(bos)
        assert ids[0] == bos_id and ids.count(bos_id) == 1


def check_sft(fed: dict, data: Path, tokenizer, family: str) -> None:
    template = resolve_template(tokenizer)
    eot_id = tokenizer.eos_token_id
    rows = read_jsonl(data / "sft/train.jsonl")
    for row, example in zip(rows, fed["examples"]):
        prompt, completion = template.render_conversation(row["messages"])
        assert completion.endswith(template.end_of_turn) and completion.count(template.end_of_turn) == 1
        ids, labels = example["input_ids"], example["labels"]
        assert tokenizer.decode(ids) == prompt + completion  # no second EOS, no template text lost
        _assert_one_bos(ids, tokenizer, family)
        trained = [token for token in labels if token != -100]
        assert tokenizer.decode(trained) == completion  # the loss covers the reply and its end of turn only
        assert ids[-1] == eot_id and trained.count(eot_id) == 1


def check_reward(fed: dict, data: Path, tokenizer, family: str) -> None:
    template = resolve_template(tokenizer)
    rows = read_jsonl(data / "reward/train.jsonl")
    for row, sequences in zip(rows, fed["examples"]):
        for side, ids in zip(("chosen", "rejected"), sequences):
            prompt, reply = template.render_conversation(row["prompt"] + row[side])
            assert tokenizer.decode(ids) == prompt + reply  # exactly what SFT trained the policy to produce
            _assert_one_bos(ids, tokenizer, family)
            # The score is read at the last token: the end of turn, once after the reply.
            assert ids[-1] == tokenizer.eos_token_id
            assert ids.count(tokenizer.eos_token_id) == 1 + prompt.count(template.end_of_turn)


def check_ppo(fed: dict, data: Path, tokenizer, family: str) -> None:
    template = resolve_template(tokenizer)
    eot_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    assert fed["stop_token_id"] == eot_id
    rows = read_jsonl(data / "prompts/train.jsonl")
    for row, ids in zip(rows, fed["prompts"]):
        rendered = template.render_prompt(row["messages"])
        assert tokenizer.decode(ids) == rendered
        assert rendered.endswith(row["messages"][-1]["content"] + FAMILIES[family]["generation_prompt"])
        _assert_one_bos(ids, tokenizer, family)

    ended_somewhere = False
    for e in fed["experiences"]:
        responses = torch.tensor(e["responses"])
        ended = (responses == eot_id).any(-1)
        ended_somewhere |= bool(ended.any())
        width = responses.shape[1]
        first = torch.where(responses == eot_id, torch.arange(width), width).min(-1).values
        assert (responses[torch.arange(width)[None, :] > first[:, None]] == pad_id).all()  # only padding after it
        # The missing-EOS penalty hits exactly the responses that never ended their turn (and the short-response
        # penalty the short ones, the end of turn counted in the length).
        raw, scores = torch.tensor(e["raw_scores"]), torch.tensor(e["scores"])
        short = short_response_penalty((responses != pad_id).sum(-1), e["min_response_length"],
                                       e["short_response_penalty"])
        torch.testing.assert_close(raw - scores, (~ended).float() * e["missing_eos_penalty"] + short)
        # The reward is read at the end of turn: it is each ended sequence's last real token, and the score moves
        # when that token is masked out.
        qr, mask = torch.tensor(e["query_responses"]), torch.tensor(e["attention_mask"])
        last = mask.shape[1] - 1 - mask.flip(-1).argmax(-1)
        assert (qr[torch.arange(len(qr)), last][ended] == eot_id).all()
        assert (raw[ended] - torch.tensor(e["scores_without_last"])[ended]).abs().min() > 1e-6
    assert ended_somewhere, "SFT should have taught the policy to end some turns within 24 tokens"
