"""Reading dataset files and checking their rows (`rlhf_recipes.data.reading`): which file, split, line, item and
column an error names, how a value is described, what each kind of source turns into, and the Hub branch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict

from rlhf_recipes.config import MissingPathError
from rlhf_recipes.data import DataError, check_row_types, column_type_problem, load_raw_dataset, read_jsonl, reading


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


GOOD = json.dumps({"prompt": "a", "completion": " b"})


# ---------------------------------------------------------------------------------------------------------------
# How a value of the wrong type is described
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("column", "value", "expected"), [
    ("text", ["a"], 'expected a string, got a list (["a"])'),
    ("text", True, "expected a string, got a boolean (true)"),  # JSON's spelling, as in the file
    ("text", {"k": 1}, 'expected a string, got an object ({"k": 1})'),
    ("text", b"ab", "expected a string, got bytes (\"b'ab'\")"),  # e.g. a binary Parquet column
    ("prompt", 1.5, "expected a string or a list of messages, got a number (1.5)"),
    # 40 characters are shown whole, a longer value is cut to 40 and marked
    ("text", {"k": "x" * 31}, 'expected a string, got an object ({"k": "' + "x" * 31 + '"})'),
    ("text", {"k": "x" * 32}, 'expected a string, got an object ({"k": "' + "x" * 32 + '"...)'),
    ("responses", " not a list", "expected a list of strings (best first), got a string (' not a list')"),
    ("messages", "hi", 'expected a list of {"role": ..., "content": ...} objects, got a string (\'hi\')'),
])
def test_a_wrong_value_is_described_by_its_kind_and_its_first_40_characters(column, value, expected):
    assert column_type_problem(column, value) == expected


def test_a_binary_parquet_column_is_refused_by_row_and_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rlhf_recipes.config import ScriptArguments
    from rlhf_recipes.data import load_stage_dataset

    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"text": [b"fine", b"x"]}), path)
    with pytest.raises(DataError) as err:
        load_stage_dataset(ScriptArguments(dataset_name=str(path)), "sft")
    assert "row 2, column 'text': expected a string, got bytes (\"b'x'\")" in str(err.value)


# ---------------------------------------------------------------------------------------------------------------
# The summary of wrong types: every problem joined, at most five shown, the count of the rest
# ---------------------------------------------------------------------------------------------------------------
def test_wrong_types_are_summed_up_in_one_message_naming_rows_columns_and_the_fix():
    rows = [{"prompt": 1, "completion": " a"}, {"prompt": "ok", "completion": " b", "other": 5}, {"completion": 2}]
    with pytest.raises(DataError) as err:
        check_row_types(rows, "f.csv")  # rows numbered from 1 unless numbers are given
    assert str(err.value) == (
        "f.csv: 2 value(s) of the wrong type, so the run was stopped before training: "
        "row 1, column 'prompt': expected a string or a list of messages, got a number (1); "
        "row 3, column 'completion': expected a string or a list of messages, got a number (2). "
        "Fix these values in the file (each column holds one type), or rename a column that is not meant for this "
        "loader.")
    check_row_types([{"prompt": "a", "unread": 3}, {"prompt": None}], "f.csv")  # nothing to refuse


@pytest.mark.parametrize(("count", "more"), [(5, None), (6, " (and 1 more)")])
def test_five_problems_are_shown_and_the_rest_counted(count, more):
    rows = [{"text": i} for i in range(count)]
    with pytest.raises(DataError) as err:
        check_row_types(rows, "f.jsonl", "line", [10 + i for i in range(count)])
    message = str(err.value)
    assert f"f.jsonl: {count} value(s)" in message and "line 14, column 'text'" in message
    assert "line 15," not in message
    tail = "got a number (4)" + (more or "") + ". Fix these values"
    assert tail in message, message
    if more is None:
        assert "more)" not in message


# ---------------------------------------------------------------------------------------------------------------
# JSONL
# ---------------------------------------------------------------------------------------------------------------
def test_read_jsonl_names_a_missing_file_and_the_line_and_column_of_a_bad_line(tmp_path):
    with pytest.raises(MissingPathError) as err:
        read_jsonl(tmp_path / "nope.jsonl")
    assert f"{tmp_path / 'nope.jsonl'} does not exist" in str(err.value)
    path = write_lines(tmp_path / "list.jsonl", [GOOD, "", "[1, 2]"])
    with pytest.raises(DataError) as err:
        read_jsonl(path)
    assert str(err.value) == f"{path}, line 3: expected a JSON object, got list."
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(GOOD.encode() + b'\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(DataError) as err:
        read_jsonl(latin)
    assert str(err.value) == (f"{latin}, line 2: invalid UTF-8 at byte 15. Re-encode the file as UTF-8 (for example "
                              "`iconv -f latin1 -t utf-8`).")
    broken = write_lines(tmp_path / "broken.jsonl", [GOOD, '{"prompt": "a", "completion": }'])
    with pytest.raises(DataError) as err:
        read_jsonl(broken)
    assert str(err.value) == (f"{broken}, line 2: malformed JSON (Expecting value at column 31). Each line must be "
                              "one complete JSON object.")


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_an_empty_file_is_refused_by_name(tmp_path, suffix):
    path = tmp_path / f"empty{suffix}"
    path.write_text("\n\n" if suffix == ".jsonl" else "[]")
    with pytest.raises(DataError) as err:
        load_raw_dataset(str(path))
    assert str(err.value) == f"{path} has no rows. (read from `dataset_name`)"


def test_a_mixed_type_column_in_jsonl_is_named_by_its_line_after_blank_lines(tmp_path):
    path = write_lines(tmp_path / "data.jsonl", [
        json.dumps({"prompt": "a", "note": None, "meta": {"id": 1}}), "",
        json.dumps({"prompt": "b", "note": None, "meta": "x"})])  # an all-null column comes first
    with pytest.raises(DataError) as err:
        load_raw_dataset(str(path))
    assert (f"{path}, line 3, column 'meta': a string ('x'), but earlier rows hold an object ({{\"id\": 1}}); "
            "a column must hold one type.") in str(err.value)


def test_rows_that_pyarrow_cannot_join_are_refused_with_the_file_named(tmp_path):
    # Each value joins the first one, but not all three together: no single row to name.
    path = write_lines(tmp_path / "data.jsonl", [json.dumps({"prompt": "p", "m": m})
                                                 for m in ({"x": 1}, {"y": 1}, {"y": "s"})])
    with pytest.raises(DataError) as err:
        load_raw_dataset(str(path))
    assert str(err.value).startswith(f"{path}: the rows do not form a table (")
    assert "check that each column holds one type" in str(err.value)


# ---------------------------------------------------------------------------------------------------------------
# JSON: a list of objects, {"data": [...]}, or JSON lines saved as .json
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("content", [
    [{"prompt": "a", "completion": " b"}, {"prompt": "c", "completion": " d"}],
    {"version": 2, "data": [{"prompt": "a", "completion": " b"}, {"prompt": "c", "completion": " d"}]},
])
def test_a_json_list_or_a_data_wrapper_is_read_as_rows(tmp_path, content):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(content))
    raw = load_raw_dataset(str(path))
    assert list(raw) == ["train"] and raw["train"].to_list() == [{"prompt": "a", "completion": " b"},
                                                                 {"prompt": "c", "completion": " d"}]


def test_json_lines_saved_as_json_are_read_as_lines_and_errors_name_the_line(tmp_path):
    path = write_lines(tmp_path / "data.json", [GOOD, json.dumps({"prompt": "c", "completion": " d"})])
    assert load_raw_dataset(str(path))["train"]["prompt"] == ["a", "c"]
    path = write_lines(tmp_path / "bad.json", [GOOD, "", json.dumps({"prompt": "c", "completion": 4})])
    with pytest.raises(DataError) as err:
        load_raw_dataset(str(path))
    assert str(err.value).startswith(f"{path}: 1 value(s) of the wrong type")
    assert "line 3, column 'completion': expected a string or a list of messages, got a number (4)" in str(err.value)


@pytest.mark.parametrize(("content", "expected"), [
    (b'[{"prompt": "a"}, ', "not valid UTF-8 JSON (Expecting"),  # cut short: not JSON lines either
    (b'[{"prompt": "caf\xe9"}]', "not valid UTF-8 JSON ('utf-8' codec can't decode"),
    (b'"some data"', "expected a JSON list of objects (or JSON lines)."),
    (b'{"rows": [{"prompt": "a"}]}', "expected a JSON list of objects (or JSON lines)."),
    (b'[{"prompt": "a"}, "x"]', "item 2: expected a JSON object, got a string ('x')."),
])
def test_a_json_file_that_is_not_a_list_of_objects_is_refused_by_name(tmp_path, content, expected):
    path = tmp_path / "data.json"
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        load_raw_dataset(str(path))
    assert str(err.value).startswith(f"{path}") and expected in str(err.value), str(err.value)


def test_json_items_are_named_by_their_position_in_the_list(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"prompt": "a", "meta": {"id": 1}}, {"prompt": ["x"]}, {"prompt": "c", "meta": "x"}]))
    with pytest.raises(DataError) as err:
        load_raw_dataset(str(path))
    assert str(err.value).startswith(f"{path}: 1 value(s)")
    assert "item 2, column 'prompt': expected a list of" in str(err.value)
    path.write_text(json.dumps([{"prompt": "a", "meta": {"id": 1}}, {"prompt": "b"}, {"prompt": "c", "meta": "x"}]))
    with pytest.raises(DataError) as err:
        load_raw_dataset(str(path))
    assert f"{path}, item 3, column 'meta': a string ('x')" in str(err.value)


# ---------------------------------------------------------------------------------------------------------------
# Folders, missing paths, unsupported files, the field an error names
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("held_out", ["test", "validation", "eval"])
def test_a_folders_held_out_file_becomes_the_test_split(tmp_path, held_out):
    write_lines(tmp_path / "data/train.jsonl", [GOOD])
    write_lines(tmp_path / f"data/{held_out}.jsonl", [json.dumps({"prompt": "h", "completion": " o"})] * 2)
    write_lines(tmp_path / "data/extra.jsonl", [GOOD])  # any other name is not a split
    raw = load_raw_dataset(str(tmp_path / "data"))
    assert sorted(raw) == ["test", "train"]
    assert raw["train"]["prompt"] == ["a"] and raw["test"]["prompt"] == ["h", "h"]


def test_an_unsupported_file_type_is_named_with_the_supported_ones(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("hello\n")
    with pytest.raises(DataError) as err:
        load_raw_dataset(str(path))
    assert str(err.value) == (f"{path}: unsupported file type '.txt'; use one of ['.csv', '.json', '.jsonl', "
                              "'.parquet']. (read from `dataset_name`)")


@pytest.fixture
def hub(monkeypatch):
    """`load_dataset` of the Hub branch replaced: records its calls and returns or raises what a test sets."""
    calls, result = [], {}

    def fake(path, **kwargs):
        calls.append((path, kwargs))
        if isinstance(result.get("value"), Exception):
            raise result["value"]
        return result["value"]

    monkeypatch.setattr(reading, "load_dataset", fake)
    for variable in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)
    return calls, result


@pytest.mark.parametrize("name", ["missing.jsonl", "./nothing-here", "ABSOLUTE"])
def test_a_missing_local_path_is_named_once_and_never_tried_on_the_hub(tmp_path, monkeypatch, hub, name):
    monkeypatch.chdir(tmp_path)
    name = str(tmp_path / "nothing-here") if name == "ABSOLUTE" else name
    with pytest.raises(DataError) as err:
        load_raw_dataset(name)  # the default field
    assert str(err.value) == f"Dataset file {name} does not exist. Check `dataset_name` in your recipe."
    assert hub[0] == []


def test_a_hub_dataset_is_loaded_with_its_config_and_a_single_split_becomes_train(hub):
    calls, result = hub
    splits = DatasetDict({"train": Dataset.from_dict({"a": [1]}), "test": Dataset.from_dict({"a": [2]})})
    result["value"] = splits
    assert load_raw_dataset("owner/name", "cfg") is splits
    assert calls == [("owner/name", {"name": "cfg"})]
    result["value"] = Dataset.from_dict({"a": [3]})
    loaded = load_raw_dataset("owner/name")
    assert isinstance(loaded, DatasetDict) and list(loaded) == ["train"] and loaded["train"]["a"] == [3]
    assert calls[-1] == ("owner/name", {"name": None})


@pytest.mark.parametrize(("env", "why"), [
    ({}, ""),
    ({"HF_HUB_OFFLINE": "1"}, " With HF_HUB_OFFLINE set, only datasets already in the local cache can be read."),
    ({"HF_DATASETS_OFFLINE": "true", "HF_HUB_OFFLINE": "1"},
     " With HF_DATASETS_OFFLINE and HF_HUB_OFFLINE set, only datasets already in the local cache can be read."),
    ({"HF_HUB_OFFLINE": "0"}, ""),
])
def test_a_hub_dataset_that_cannot_be_loaded_says_whether_offline_mode_is_why(hub, monkeypatch, env, why):
    calls, result = hub
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    result["value"] = ConnectionError("no network")
    with pytest.raises(DataError) as err:
        load_raw_dataset("owner/name", field="ptx_dataset")
    assert str(err.value) == ("Dataset 'owner/name' is not a local file or folder, and could not be loaded as a Hub "
                              f"dataset: no network.{why} Check `ptx_dataset`.")
