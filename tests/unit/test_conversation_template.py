"""The one conversation renderer: chat templates (ChatML, Llama 3) and HH text, end-of-turn as EOS, one BOS, and the
conversational row layouts the loader accepts. Expected strings are written out by hand from each template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from chat_models import save_chat_model

from rlhf_recipes.config import ScriptArguments
from rlhf_recipes.data import (
    DataError,
    encode_text,
    load_stage_dataset,
    parse_hh,
    render_conversation,
    render_prompt,
    resolve_template,
)
from rlhf_recipes.models import load_tokenizer

CHAT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
CHATML_PROMPT = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                 "<|im_start|>assistant\n")
LLAMA3_PROMPT = ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                 "<|start_header_id|>assistant<|end_header_id|>\n\n")


@pytest.fixture(scope="module")
def chat_dirs(demo_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("chat-tokenizers")
    return {family: save_chat_model(family, demo_dir, root / family) for family in ("llama3", "qwen2")}


@pytest.fixture(scope="module")
def qwen2(chat_dirs):
    return load_tokenizer(str(chat_dirs["qwen2"]))


@pytest.fixture(scope="module")
def llama3(chat_dirs):
    return load_tokenizer(str(chat_dirs["llama3"]))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_chatml_prompt_ends_at_the_generation_prompt_and_the_reply_at_im_end(qwen2):
    assert render_prompt(CHAT[:1], qwen2) == CHATML_PROMPT
    assert render_conversation(CHAT, qwen2) == (CHATML_PROMPT, "Hello!<|im_end|>")  # not the "\n" after it
    longer = [*CHAT, {"role": "user", "content": "More?"}, {"role": "assistant", "content": "No."}]
    prompt, completion = render_conversation(longer, qwen2)
    assert prompt == CHATML_PROMPT + "Hello!<|im_end|>\n<|im_start|>user\nMore?<|im_end|>\n<|im_start|>assistant\n"
    assert completion == "No.<|im_end|>"


def test_llama3_renders_with_one_bos_and_ends_the_reply_at_eot(llama3):
    prompt, completion = render_conversation(CHAT, llama3)
    assert (prompt, completion) == (LLAMA3_PROMPT, "Hello!<|eot_id|>")
    bos = llama3.convert_tokens_to_ids("<|begin_of_text|>")
    assert llama3(prompt)["input_ids"][:2] == [bos, bos]  # the trap: the tokenizer adds its own BOS
    ids = encode_text(llama3, prompt + completion)
    assert ids.count(bos) == 1 and ids[0] == bos and ids[-1] == llama3.convert_tokens_to_ids("<|eot_id|>")
    assert encode_text(llama3, "plain text")[0] == bos  # text without one still gets the tokenizer's BOS


def test_the_loader_makes_the_end_of_turn_token_the_eos(chat_dirs, qwen2, llama3):
    assert (qwen2.eos_token, llama3.eos_token) == ("<|im_end|>", "<|eot_id|>")
    assert qwen2.pad_token_id not in (qwen2.eos_token_id, None)
    # Forcing HH text keeps the tokenizer's own EOS, and renders HH even though a template exists.
    forced = load_tokenizer(str(chat_dirs["llama3"]), conversation_template="hh")
    assert forced.eos_token == "<|end_of_text|>"
    assert render_conversation(CHAT, forced, "hh") == ("\n\nHuman: Hi\n\nAssistant:", " Hello!")


def test_auto_falls_back_to_hh_and_forcing_a_missing_template_is_an_error(demo_dir):
    tokenizer = load_tokenizer(str(demo_dir / "base"))
    assert resolve_template(tokenizer).name == "hh" and resolve_template(None).name == "hh"
    assert tokenizer.eos_token == "<|endoftext|>"
    with pytest.raises(ValueError, match="has no chat template.*conversation_template: hh"):
        resolve_template(tokenizer, "chat_template")
    with pytest.raises(ValueError, match="must be one of"):
        resolve_template(tokenizer, "chatml")


def test_parse_hh_gives_turns_that_render_back_to_the_same_hh_text():
    conversation = "\n\nHuman: Hi there\n\nAssistant: Hello.\n\nHuman: A film?\n\nAssistant: Alien."
    assert parse_hh(conversation) == [
        {"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "A film?"}, {"role": "assistant", "content": "Alien."}]
    prompt, completion = render_conversation(parse_hh(conversation))
    assert prompt + completion == conversation


def test_hh_rows_are_rendered_in_the_chat_template_for_every_stage(tmp_path, qwen2):
    path = write_jsonl(tmp_path / "hh.jsonl", [
        {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."}])
    script_args = ScriptArguments(dataset_name=str(path))
    sft, _ = load_stage_dataset(script_args, "sft", tokenizer=qwen2)
    assert sft["train"][0] == {"prompt": CHATML_PROMPT, "completion": "Hello!<|im_end|>"}
    reward, _ = load_stage_dataset(script_args, "reward", tokenizer=qwen2)
    assert reward["train"][0] == {"prompt": CHATML_PROMPT, "chosen": "Hello!<|im_end|>",
                                  "rejected": "Go away.<|im_end|>"}
    prompts, _ = load_stage_dataset(script_args, "prompts", tokenizer=qwen2)
    assert prompts["train"][0] == {"prompt": CHATML_PROMPT}
    # An empty reply renders as the end-of-turn token alone: still no demonstration for SFT, still noted for the RM.
    empty = write_jsonl(tmp_path / "empty.jsonl", [
        {"chosen": "\n\nHuman: Hi\n\nAssistant:", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."}])
    with pytest.raises(DataError, match=r"empty completion .* \(rows 1\)"):
        load_stage_dataset(ScriptArguments(dataset_name=str(empty)), "sft", tokenizer=qwen2)
    reward, reports = load_stage_dataset(ScriptArguments(dataset_name=str(empty)), "reward", tokenizer=qwen2)
    assert reward["train"][0]["chosen"] == "<|im_end|>" and reports[0].noted == {"empty preferred response": [1]}
    hh_args = ScriptArguments(dataset_name=str(path), conversation_template="hh")  # the HH text, as written
    assert load_stage_dataset(hh_args, "sft", tokenizer=qwen2)[0]["train"][0] == {
        "prompt": "\n\nHuman: Hi\n\nAssistant:", "completion": " Hello!"}


def test_conversational_pairs_in_trl_and_ultrafeedback_layouts(tmp_path, qwen2):
    expected = {"prompt": CHATML_PROMPT, "chosen": "Hello!<|im_end|>", "rejected": "Go away.<|im_end|>"}
    # TRL's conversational preference layout: prompt turns, the replies alone
    trl = write_jsonl(tmp_path / "trl.jsonl", [
        {"prompt": CHAT[:1], "chosen": [CHAT[1]], "rejected": [{"role": "assistant", "content": "Go away."}]}])
    reward, _ = load_stage_dataset(ScriptArguments(dataset_name=str(trl)), "reward", tokenizer=qwen2)
    assert reward["train"][0] == expected
    # UltraFeedback's: a plain prompt, whole conversations as chosen/rejected; pairs that part before the last turn
    # are compared as whole conversations (noted, as for HH)
    ultrafeedback = write_jsonl(tmp_path / "uf.jsonl", [
        {"prompt": "Hi", "chosen": CHAT, "rejected": [CHAT[0], {"role": "assistant", "content": "Go away."}]},
        {"prompt": "Hi", "chosen": CHAT, "rejected": [{"role": "user", "content": "Yo"}, CHAT[1]]}])
    script_args = ScriptArguments(dataset_name=str(ultrafeedback))
    reward, reports = load_stage_dataset(script_args, "reward", tokenizer=qwen2)
    assert reward["train"][0] == expected
    whole = reward["train"][1]
    assert whole["prompt"] == "" and whole["chosen"] == CHATML_PROMPT + "Hello!<|im_end|>"
    assert whole["rejected"].startswith("<|im_start|>system") and "Yo<|im_end|>" in whole["rejected"]
    assert reports[0].noted == {"pair differs before the final assistant turn (compared as whole conversations)": [2]}
    prompts, _ = load_stage_dataset(script_args, "prompts", tokenizer=qwen2)
    assert prompts["train"]["prompt"] == [CHATML_PROMPT, CHATML_PROMPT]  # the chosen conversation's turns


def test_plain_string_prompts_are_used_as_written(tmp_path, qwen2):
    path = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "The film was", "completion": " great."}])
    sft, _ = load_stage_dataset(ScriptArguments(dataset_name=str(path)), "sft", tokenizer=qwen2)
    assert sft["train"][0] == {"prompt": "The film was", "completion": " great."}


def test_bad_messages_name_the_row_and_the_problem(tmp_path, qwen2):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "robot", "content": "beep"}]},
                                                {"messages": [CHAT[0]]}, {"messages": CHAT}])
    with pytest.raises(DataError, match=r"row 1: 'messages' unknown role 'robot'"):
        load_stage_dataset(ScriptArguments(dataset_name=str(path), invalid_rows="error"), "sft", tokenizer=qwen2)
    sft, reports = load_stage_dataset(ScriptArguments(dataset_name=str(path)), "sft", tokenizer=qwen2)
    assert len(sft["train"]) == 1
    assert reports[0].dropped["'messages' the last message must be the assistant's"] == [2]
