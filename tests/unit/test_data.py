"""The shared dataset loader: HH template, format detection, file errors, row validation and prompt fitting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gpt2_like import gpt2_like_tokenizer

from rlhf_recipes.config import ScriptArguments
from rlhf_recipes.data import (
    ASSISTANT,
    DataError,
    detect_format,
    load_raw_dataset,
    load_stage_dataset,
    read_jsonl,
    render_conversation,
    render_prompt,
    split_hh,
)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def args(dataset_name, **overrides) -> ScriptArguments:
    return ScriptArguments(dataset_name=str(dataset_name), **overrides)


@pytest.fixture(scope="module")
def hh_rows(hh_sample) -> list[dict]:
    return read_jsonl(hh_sample)


@pytest.fixture(scope="module")
def tokenizer():
    return gpt2_like_tokenizer()


# ---------------------------------------------------------------------------------------------------------------
# HH template
# ---------------------------------------------------------------------------------------------------------------
def test_split_hh_cuts_after_the_last_assistant_cue():
    conversation = "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: And you?\n\nAssistant: Fine, thanks."
    prompt, response = split_hh(conversation)
    assert prompt == "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: And you?\n\nAssistant:"
    assert response == " Fine, thanks."
    with pytest.raises(ValueError, match="Assistant"):
        split_hh("\n\nHuman: no reply here")


def test_every_hh_sample_prompt_ends_with_the_cue_and_rebuilds_chosen(hh_rows):
    assert len(hh_rows) == 400
    for row in hh_rows:
        for column in ("chosen", "rejected"):
            prompt, response = split_hh(row[column])
            assert prompt.endswith(ASSISTANT)
            assert prompt + response == row[column]
            assert ASSISTANT not in response


def test_hh_sample_through_sft_keeps_prompt_plus_completion_equal_to_chosen(hh_sample, hh_rows):
    dataset, (report,) = load_stage_dataset(args(hh_sample, dataset_format="hh"), "sft")
    kept_rows = [row for number, row in enumerate(hh_rows, start=1)
                 if number not in {n for rows in report.dropped.values() for n in rows}]
    assert len(dataset["train"]) == report.kept == len(kept_rows)
    for formatted, raw in zip(dataset["train"], kept_rows, strict=True):
        assert formatted["prompt"].endswith(ASSISTANT)
        assert formatted["prompt"] + formatted["completion"] == raw["chosen"]


def test_hh_sample_through_the_reward_stage_keeps_all_rows_and_notes_row_87(hh_sample, hh_rows):
    dataset, (report,) = load_stage_dataset(args(hh_sample), "reward")  # auto-detected as hh
    assert report.rows_read == report.kept == len(dataset["train"]) == 400
    assert report.dropped == {}
    assert report.noted["empty preferred response"] == [87]
    assert split_hh(hh_rows[86]["chosen"])[1].strip() == ""  # row 87: the preferred reply is blank
    for formatted, raw in zip(dataset["train"], hh_rows, strict=True):
        assert formatted["prompt"] + formatted["chosen"] == raw["chosen"]
        assert formatted["prompt"] + formatted["rejected"] == raw["rejected"]
    # The report says so in words too (what the recipe prints before training).
    assert "empty preferred response (rows 87)" in report.summary()


def test_messages_render_in_the_hh_template():
    messages = [
        {"role": "user", "content": "Recommend a film. "},
        {"role": "assistant", "content": "Try Alien."},
        {"role": "user", "content": "Something lighter?"},
        {"role": "assistant", "content": " Try Paddington 2. "},
    ]
    prompt, completion = render_conversation(messages)
    assert prompt == "\n\nHuman: Recommend a film.\n\nAssistant: Try Alien.\n\nHuman: Something lighter?\n\nAssistant:"
    assert completion == " Try Paddington 2."
    # Rendered conversations split back exactly like HH rows do.
    assert split_hh(prompt + completion) == (prompt, completion)
    assert render_prompt(messages[:1]) == "\n\nHuman: Recommend a film.\n\nAssistant:"
    with pytest.raises(ValueError, match="assistant"):
        render_conversation(messages[:1])
    with pytest.raises(ValueError, match="unknown role"):
        render_prompt([{"role": "robot", "content": "beep"}])


def test_messages_file_feeds_sft_and_prompt_stages(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
    ])
    sft, _ = load_stage_dataset(args(path), "sft")
    assert sft["train"][0] == {"prompt": "\n\nHuman: Hi\n\nAssistant:", "completion": " Hello!"}
    prompts, _ = load_stage_dataset(args(path), "prompts")
    assert prompts["train"][0] == {"prompt": "\n\nHuman: Hi\n\nAssistant:"}


# ---------------------------------------------------------------------------------------------------------------
# Format detection and file errors
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("columns", "stage", "expected"), [
    (["prompt", "completion"], "sft", "prompt_completion"),
    (["text"], "sft", "text"),
    (["messages"], "sft", "messages"),
    (["chosen", "rejected"], "sft", "hh"),
    (["chosen", "rejected"], "reward", "hh"),
    (["prompt", "chosen", "rejected"], "reward", "preference"),
    (["prompt", "responses"], "reward", "ranking"),
    (["prompt", "responses", "extra"], "sft", "ranking"),
    (["prompt"], "prompts", "prompt"),
    (["prompt", "completion"], "prompts", "prompt_completion"),
    (["chosen", "rejected"], "prompts", "hh"),
])
def test_format_detection(columns, stage, expected):
    assert detect_format(columns, "f.jsonl", stage) == expected


def test_text_only_file_cannot_feed_the_reward_stage():
    with pytest.raises(DataError, match="no usable columns for the reward stage"):
        detect_format(["text"], "f.jsonl", "reward")


def test_detection_failure_names_the_file_and_the_columns(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError) as err:
        load_stage_dataset(args(path), "reward")
    message = str(err.value)
    assert str(path) in message and "question" in message and "chosen" in message


def test_missing_column_names_the_file_and_the_column(tmp_path):
    path = write_jsonl(tmp_path / "half.jsonl", [{"prompt": "a", "chosen": "b"}])
    with pytest.raises(DataError) as err:
        load_stage_dataset(args(path, dataset_format="preference"), "reward")
    message = str(err.value)
    assert str(path) in message
    assert "'rejected'" in message and "missing column" in message


def test_malformed_json_line_names_the_file_and_the_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"prompt": "a", "completion": " b"}\n\n{"prompt": "c", "completion": \n', encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_stage_dataset(args(path), "sft")
    assert f"{path}, line 3" in str(err.value) and "malformed JSON" in str(err.value)


def test_invalid_utf8_names_the_file_and_the_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prompt": "a", "completion": " b"}\n' + '{"prompt": "caf\u00e9", "completion": " x"}\n'
                     .encode("latin-1"))
    with pytest.raises(DataError) as err:
        load_stage_dataset(args(path), "sft")
    assert f"{path}, line 2" in str(err.value) and "UTF-8" in str(err.value)


def test_local_folder_with_train_and_test_files(tmp_path):
    write_jsonl(tmp_path / "data/train.jsonl", [{"prompt": f"p{i}", "completion": f" c{i}"} for i in range(5)])
    write_jsonl(tmp_path / "data/test.jsonl", [{"prompt": "q", "completion": " d"}] * 2)
    (tmp_path / "data/notes.jsonl").write_text("not json at all\n")  # neither train nor test: ignored
    raw = load_raw_dataset(str(tmp_path / "data"))
    assert set(raw) == {"train", "test"}
    dataset, reports = load_stage_dataset(args(tmp_path / "data", max_eval_samples=1), "sft")
    assert len(dataset["train"]) == 5 and len(dataset["test"]) == 1
    assert [r.split for r in reports] == ["train", "test"]
    assert dataset["train"][3] == {"prompt": "p3", "completion": " c3"}


def test_missing_local_file_and_folder_without_train(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_raw_dataset(str(tmp_path / "nope.jsonl"))
    write_jsonl(tmp_path / "only_test/test.jsonl", [{"text": "x"}])
    with pytest.raises(DataError, match="no train"):
        load_raw_dataset(str(tmp_path / "only_test"))


# ---------------------------------------------------------------------------------------------------------------
# Rows a stage cannot use
# ---------------------------------------------------------------------------------------------------------------
def test_empty_completion_is_dropped_with_its_row_number_or_raised(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [
        {"prompt": "a", "completion": " fine"},
        {"prompt": "b", "completion": "   "},
        {"prompt": "c", "completion": " ok"},
        {"prompt": "d", "completion": ""},
    ])
    dataset, (report,) = load_stage_dataset(args(path), "sft")
    assert [row["prompt"] for row in dataset["train"]] == ["a", "c"]
    assert report.rows_read == 4 and report.kept == 2
    (reason, rows), = report.dropped.items()
    assert "empty completion" in reason and rows == [2, 4]
    with pytest.raises(DataError) as err:
        load_stage_dataset(args(path, invalid_rows="error"), "sft")
    assert "row 2" in str(err.value) and str(path) in str(err.value) and "empty completion" in str(err.value)


def test_chosen_equal_to_rejected_is_dropped(tmp_path):
    path = write_jsonl(tmp_path / "pref.jsonl", [
        {"prompt": "p", "chosen": " good", "rejected": " bad"},
        {"prompt": "p", "chosen": " same", "rejected": " same"},
    ])
    dataset, (report,) = load_stage_dataset(args(path), "reward")
    assert len(dataset["train"]) == 1 and dataset["train"][0]["chosen"] == " good"
    assert report.dropped == {"chosen equals rejected": [2]}
    hh = write_jsonl(tmp_path / "hh.jsonl", [
        {"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: a\n\nAssistant: x"},
        {"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: a\n\nAssistant: y"},
    ])
    dataset, (report,) = load_stage_dataset(args(hh), "reward")
    assert report.dropped == {"chosen equals rejected": [1]} and report.kept == 1
    with pytest.raises(DataError, match="row 1"):
        load_stage_dataset(args(hh, invalid_rows="error"), "reward")


def test_ranking_with_fewer_than_two_responses_is_dropped(tmp_path):
    path = write_jsonl(tmp_path / "rank.jsonl", [
        {"prompt": "p", "responses": [" best", " middle", " worst"]},
        {"prompt": "p", "responses": [" alone"]},
        {"prompt": "p", "responses": []},
        {"prompt": "p", "responses": [" a", " b"]},
    ])
    dataset, (report,) = load_stage_dataset(args(path), "reward")
    assert [row["responses"] for row in dataset["train"]] == [[" best", " middle", " worst"], [" a", " b"]]
    assert report.dropped == {"a ranking needs at least two responses": [2, 3]}


# ---------------------------------------------------------------------------------------------------------------
# Prompts longer than the context leaves them
# ---------------------------------------------------------------------------------------------------------------
def _token_count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_long_prompts_are_truncated_from_the_left_to_a_suffix_within_the_limit(hh_sample, tokenizer):
    limit = 48
    prompts = [split_hh(row["chosen"])[0] for row in read_jsonl(hh_sample)]
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    long_ids = [i for i in ids if len(i) > limit]
    assert len(long_ids) > 100
    # Some cut points fall inside a multi-byte character (curly quotes in HH): the case that must not leak "\ufffd".
    assert any(tokenizer.decode(i[-limit:]).startswith("\ufffd") for i in long_ids)

    dataset, (report,) = load_stage_dataset(args(hh_sample, dataset_format="hh"), "prompts",
                                            tokenizer=tokenizer, max_prompt_tokens=limit)
    assert report.kept == 400 and report.truncated_prompts == len(long_ids)
    for original, original_ids, fitted in zip(prompts, ids, dataset["train"]["prompt"], strict=True):
        assert original.endswith(fitted)  # cut from the left: the last turn and the cue survive
        assert fitted.endswith(ASSISTANT)
        assert "\ufffd" not in fitted
        if len(original_ids) > limit:
            # Within the limit, and no more than a character's bytes short of it.
            assert limit - 3 <= _token_count(tokenizer, fitted) <= limit
        else:
            assert fitted == original


def test_long_prompts_dropped_or_raised_as_configured(tmp_path, tokenizer):
    long_prompt = "I watched this film twice and " * 20
    path = write_jsonl(tmp_path / "sft.jsonl", [
        {"prompt": "Short prompt,", "completion": " short answer."},
        {"prompt": long_prompt, "completion": " long answer."},
    ])
    limit = 16
    assert _token_count(tokenizer, long_prompt) > limit >= _token_count(tokenizer, "Short prompt,")

    dataset, (report,) = load_stage_dataset(args(path, prompt_overflow="drop"), "sft", tokenizer=tokenizer,
                                            max_prompt_tokens=limit)
    assert dataset["train"]["prompt"] == ["Short prompt,"]
    assert report.dropped == {f"prompt longer than {limit} tokens": [2]}

    with pytest.raises(DataError) as err:
        load_stage_dataset(args(path, prompt_overflow="error"), "sft", tokenizer=tokenizer, max_prompt_tokens=limit)
    assert str(path) in str(err.value) and "row 2" in str(err.value)

    dataset, (report,) = load_stage_dataset(args(path), "sft", tokenizer=tokenizer, max_prompt_tokens=limit)
    assert report.truncated_prompts == 1 and report.kept == 2
    assert long_prompt.endswith(dataset["train"][1]["prompt"]) and dataset["train"][1]["completion"] == " long answer."
    assert _token_count(tokenizer, dataset["train"][1]["prompt"]) <= limit


# ---------------------------------------------------------------------------------------------------------------
# Values of the wrong type: the whole run is refused before pyarrow or a trainer sees them
# ---------------------------------------------------------------------------------------------------------------
WRONG_TYPES = [
    # (rows, stage, line, column, words of the message)
    ([{"prompt": "a", "completion": " x"}, {"prompt": "b", "completion": 42}], "sft", 2, "completion",
     "expected a string or a list of messages, got a number (42)"),
    ([{"prompt": ["a"], "completion": " x"}], "sft", 1, "prompt", "message 1 is a string ('a')"),
    ([{"text": "fine"}, {"text": {"body": "x"}}], "sft", 2, "text", "expected a string, got an object"),
    ([{"prompt": "p", "chosen": " a", "rejected": True}], "reward", 1, "rejected", "got a boolean"),
    ([{"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": 3.5}], "reward", 1, "rejected", "got a number"),
    ([{"prompt": "p", "responses": [" a", " b"]}, {"prompt": "p", "responses": [" a", 7]}], "reward", 2,
     "responses", "response 2 is a number (7)"),
    ([{"prompt": "p", "responses": " not a list"}], "reward", 1, "responses", "expected a list of strings"),
    ([{"prompt": "p", "responses": [" a", None]}], "reward", 1, "responses", "response 2 is null"),
    ([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": 5}]}], "sft", 1,
     "messages", "message 2's 'content' must be a string, got a number (5)"),
    ([{"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}], "sft", 1, "messages",
     "message 1 has no 'content'"),
    ([{"messages": ["hi", {"role": "assistant", "content": "x"}]}], "prompts", 1, "messages",
     "message 1 is a string ('hi')"),
    ([{"messages": "hi"}], "prompts", 1, "messages", "expected a list of"),
    ([{"prompt": 12}], "prompts", 1, "prompt",
     "expected a string or a list of messages, got a number (12)"),
]


@pytest.mark.parametrize(("rows", "stage", "line", "column", "words"), WRONG_TYPES)
def test_a_value_of_the_wrong_type_names_file_line_column_and_expected_type(tmp_path, rows, stage, line, column,
                                                                           words):
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    for invalid_rows in ("drop", "error"):  # never dropped: the file is wrong
        with pytest.raises(DataError) as err:
            load_stage_dataset(args(path, invalid_rows=invalid_rows), stage)
        message = str(err.value)
        assert str(path) in message and f"line {line}, column '{column}'" in message, message
        assert words in message, message
        assert "before training" in message


def test_blank_lines_do_not_shift_the_reported_line_and_all_problems_are_counted(tmp_path):
    path = tmp_path / "data.jsonl"
    good = json.dumps({"prompt": "a", "completion": " x"})
    path.write_text(f"{good}\n\n{good}\n" + "".join(json.dumps({"prompt": i, "completion": " x"}) + "\n"
                                                   for i in range(7)))
    with pytest.raises(DataError) as err:
        load_stage_dataset(args(path), "sft")
    message = str(err.value)
    assert "7 value(s) of the wrong type" in message and "line 4, column 'prompt'" in message
    assert "line 8, column 'prompt'" in message and "(and 2 more)" in message and "line 9," not in message


def test_other_sources_are_type_checked_too(tmp_path):
    import csv

    path = tmp_path / "data.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerows([["prompt", "completion"], [1, 2], [3, 4]])
    with pytest.raises(DataError, match=r"row 1, column 'prompt': expected a string or a list of messages, got a number \(1\)"):
        load_stage_dataset(args(path), "sft")
    as_json = tmp_path / "data.json"
    as_json.write_text(json.dumps([{"prompt": "a", "completion": " b"}, {"prompt": "a", "completion": [" b"]}]))
    with pytest.raises(DataError, match=r"item 2, column 'completion': .*message 1 is a string"):
        load_stage_dataset(args(as_json), "sft")


def test_an_unread_column_of_mixed_types_is_named_instead_of_a_pyarrow_error(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [{"prompt": "a", "completion": " b", "meta": {"id": 1}},
                                                 {"prompt": "a", "completion": " c", "meta": "x"}])
    with pytest.raises(DataError) as err:
        load_stage_dataset(args(path), "sft")
    assert f"{path}, line 2, column 'meta'" in str(err.value) and "one type" in str(err.value)


def test_null_and_missing_values_are_rows_to_drop_not_type_errors(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [{"prompt": "a", "completion": " b"},
                                                 {"prompt": "a", "completion": None}, {"prompt": "c"},
                                                 {"prompt": "d", "completion": " e", "extra": 1}])
    dataset, (report,) = load_stage_dataset(args(path), "sft")
    assert dataset["train"]["prompt"] == ["a", "d"]
    assert report.dropped == {"no value in column 'completion'": [2, 3]}


def test_report_goes_to_the_console_as_a_warning_with_counts_rows_and_file(tmp_path, tokenizer, caplog):
    long_completion = " and it was long" * 20
    path = write_jsonl(tmp_path / "sft.jsonl", [
        {"prompt": "a", "completion": " fine"}, {"prompt": "b", "completion": ""},
        {"prompt": "c", "completion": long_completion}, {"prompt": "d", "completion": " ok"},
    ])
    with caplog.at_level("WARNING", logger="rlhf_recipes.data"):
        _, (report,) = load_stage_dataset(args(path), "sft", tokenizer=tokenizer, max_prompt_tokens=8,
                                          max_length=32, report_dir=tmp_path / "run")
    assert report.truncated_responses == 1
    (record,) = [r for r in caplog.records if r.levelname == "WARNING"]
    text = record.getMessage()
    assert "dropped 1" in text and "responses truncated 1" in text and "(rows 2)" in text
    assert str(tmp_path / "run" / "data_report.json") in text
    saved = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert saved[0]["dropped"] == {"empty completion (SFT has nothing to learn from it)": [2]}
    # A clean split stays at INFO level.
    clean = write_jsonl(tmp_path / "clean.jsonl", [{"prompt": "a", "completion": " fine"}])
    caplog.clear()
    with caplog.at_level("INFO", logger="rlhf_recipes.data"):
        load_stage_dataset(args(clean), "sft")
    assert caplog.records and {r.levelname for r in caplog.records} == {"INFO"}


def test_a_missing_dataset_path_is_not_mistaken_for_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="'runs/demo/data/sft' is no such local file or folder, and not a valid Hub"):
        load_raw_dataset("runs/demo/data/sft")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="HF_DATASETS_OFFLINE.*set, only datasets already in the local cache"):
        load_raw_dataset("someone/dataset-not-cached")


def test_ptx_text_without_text_is_dropped_and_long_text_cut_with_a_warning(tmp_path, tokenizer, caplog):
    from rlhf_recipes.data import tokenize_texts

    path = write_jsonl(tmp_path / "ptx.jsonl", [{"text": "A short review."}, {"text": ""}, {"text": None},
                                                {"text": "A long review that goes on and on. " * 10}])
    with caplog.at_level("WARNING", logger="rlhf_recipes.data"):
        ids = tokenize_texts(str(path), tokenizer, 16)["input_ids"]
    assert len(ids) == 2 and len(ids[1]) == 16 and ids[0][-1] == tokenizer.eos_token_id
    assert "dropped 2" in caplog.text and "texts truncated 1" in caplog.text and "(rows 2, 3)" in caplog.text
