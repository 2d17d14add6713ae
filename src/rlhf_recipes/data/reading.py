"""Reading datasets (a Hub id, a local JSONL/JSON/CSV/Parquet file or a folder of splits) and checking the type of
every reserved column row by row, so that a bad value is reported by its file, line and column."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, load_dataset

from ..config import MissingPathError, UserError

LOCAL_EXTENSIONS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


class DataError(UserError, ValueError):
    """A dataset problem; the message names the file, the row or column, and how to fix it."""


# What each column the formats read must hold. A wrong type stops the run (the file is wrong, not one row); a null
# or missing value is treated like an empty one (dropped or raised per `invalid_rows`).
STRING_COLUMNS = ("prompt", "completion", "text", "chosen", "rejected")
CONVERSATIONAL_COLUMNS = ("prompt", "completion", "chosen", "rejected")
LIST_COLUMNS = {"responses": "a list of strings (best first)",
                "messages": 'a list of {"role": ..., "content": ...} objects'}
SHOWN_PROBLEMS = 5


# ----------------------------------------------------------------------------------------------------------------
# Column types, checked row by row before anything reaches pyarrow or a trainer
# ----------------------------------------------------------------------------------------------------------------
def _describe(value: Any) -> str:
    kind = ("null" if value is None else "a boolean" if isinstance(value, bool)
            else "a number" if isinstance(value, (int, float)) else "a string" if isinstance(value, str)
            else "a list" if isinstance(value, list) else "an object" if isinstance(value, dict)
            else type(value).__name__)
    shown = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return f"{kind} ({shown[:40]}{'...' if len(shown) > 40 else ''})"


def column_type_problem(column: str, value: Any) -> str | None:
    """Why `value` cannot be in `column` (a reserved column of the formats), or None. Null is not a type problem."""
    if value is None:
        return None
    if column in STRING_COLUMNS:
        if isinstance(value, list) and column in CONVERSATIONAL_COLUMNS:
            # TRL's conversational layout: the prompt or a response as a list of messages.
            return column_type_problem("messages", value)
        if isinstance(value, str):
            return None
        expected = "a string or a list of messages" if column in CONVERSATIONAL_COLUMNS else "a string"
        return f"expected {expected}, got {_describe(value)}"
    if column == "responses":
        if not isinstance(value, list):
            return f"expected {LIST_COLUMNS[column]}, got {_describe(value)}"
        for i, item in enumerate(value, start=1):
            if not isinstance(item, str):
                return f"expected {LIST_COLUMNS[column]}, but response {i} is {_describe(item)}"
        return None
    if column == "messages":
        if not isinstance(value, list):
            return f"expected {LIST_COLUMNS[column]}, got {_describe(value)}"
        for i, message in enumerate(value, start=1):
            if not isinstance(message, dict):
                return f"expected {LIST_COLUMNS[column]}, but message {i} is {_describe(message)}"
            for key in ("role", "content"):
                if key not in message or message[key] is None:
                    return f"message {i} has no '{key}'"
                if not isinstance(message[key], str):
                    return f"message {i}'s '{key}' must be a string, got {_describe(message[key])}"
        return None
    return None


def _raise_type_problems(problems: list[str], source: str) -> None:
    if not problems:
        return
    more = f" (and {len(problems) - SHOWN_PROBLEMS} more)" if len(problems) > SHOWN_PROBLEMS else ""
    raise DataError(
        f"{source}: {len(problems)} value(s) of the wrong type, so the run was stopped before training: "
        f"{'; '.join(problems[:SHOWN_PROBLEMS])}{more}. Fix these values in the file (each column holds one type), "
        "or rename a column that is not meant for this loader."
    )


def check_row_types(rows: list[dict[str, Any]], source: str, unit: str = "row",
                    numbers: list[int] | None = None) -> None:
    """Refuse a wrong type in any reserved column of any row, naming the row (or line), the column and the type."""
    problems = []
    for index, row in enumerate(rows):
        for column in (*STRING_COLUMNS, *LIST_COLUMNS):
            problem = column_type_problem(column, row.get(column)) if column in row else None
            if problem:
                number = numbers[index] if numbers else index + 1
                problems.append(f"{unit} {number}, column '{column}': {problem}")
    _raise_type_problems(problems, source)


def _rows_to_dataset(rows: list[dict[str, Any]], source: str, unit: str = "row",
                     numbers: list[int] | None = None) -> Dataset:
    """`Dataset.from_list` after the type checks, with every key of every row (not only the first row's)."""
    import pyarrow as pa

    check_row_types(rows, source, unit, numbers)
    keys = list(dict.fromkeys(key for row in rows for key in row))
    table = {key: [row.get(key) for row in rows] for key in keys}
    try:
        return Dataset.from_dict(table)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as err:
        # A column this loader does not read, holding different types in different rows.
        for key, values in table.items():
            first = next((v for v in values if v is not None), None)
            for index, value in enumerate(values):
                try:
                    pa.array([first, value])
                except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                    number = numbers[index] if numbers else index + 1
                    raise DataError(
                        f"{source}, {unit} {number}, column '{key}': {_describe(value)}, but earlier rows hold "
                        f"{_describe(first)}; a column must hold one type. Fix the value or remove the column."
                    ) from err
        raise DataError(f"{source}: the rows do not form a table ({err}); check that each column holds one type.") \
            from err


# ----------------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------------
def read_jsonl(path: str | os.PathLike, line_numbers: list[int] | None = None) -> list[dict[str, Any]]:
    """Read a JSONL file line by line so that a bad line is reported by its number, not by a parser stack trace.

    `line_numbers`, when given, receives the line number of each row (blank lines are skipped).
    """
    rows = []
    if not Path(path).is_file():
        raise MissingPathError(f"{path} does not exist (or is not a file). Check the path (relative paths start "
                                f"from {os.getcwd()}), or that the command that writes it has run.")
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(
                    f"{path}, line {line_number}: invalid UTF-8 at byte {err.start}. Re-encode the file as UTF-8 "
                    "(for example `iconv -f latin1 -t utf-8`)."
                ) from err
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as err:
                raise DataError(
                    f"{path}, line {line_number}: malformed JSON ({err.msg} at column {err.colno}). Each line must "
                    "be one complete JSON object."
                ) from err
            if not isinstance(row, dict):
                raise DataError(f"{path}, line {line_number}: expected a JSON object, got {type(row).__name__}.")
            rows.append(row)
            if line_numbers is not None:
                line_numbers.append(line_number)
    return rows


def _read_local_file(path: Path) -> Dataset:
    if path.suffix == ".jsonl":
        lines: list[int] = []
        rows = read_jsonl(path, lines)
        if not rows:
            raise DataError(f"{path} has no rows.")
        return _rows_to_dataset(rows, str(path), "line", lines)
    if path.suffix == ".json":
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            if isinstance(err, json.JSONDecodeError) and "Extra data" in err.msg:
                lines: list[int] = []
                rows = read_jsonl(path, lines)  # JSON lines saved as .json
                return _rows_to_dataset(rows, str(path), "line", lines)
            raise DataError(f"{path}: not valid UTF-8 JSON ({err}). Fix the file or save it as JSONL.") from err
        if isinstance(content, dict) and "data" in content:
            content = content["data"]
        if not isinstance(content, list):
            raise DataError(f"{path}: expected a JSON list of objects (or JSON lines).")
        for index, item in enumerate(content, start=1):
            if not isinstance(item, dict):
                raise DataError(f"{path}, item {index}: expected a JSON object, got {_describe(item)}.")
        if not content:
            raise DataError(f"{path} has no rows.")
        return _rows_to_dataset(content, str(path), "item")
    return load_dataset(LOCAL_EXTENSIONS[path.suffix], data_files=str(path), split="train")


def load_raw_dataset(name_or_path: str, config: str | None = None, *, field: str = "dataset_name") -> DatasetDict:
    """Load a Hub dataset id, a local file (`.jsonl/.json/.csv/.parquet`) or a folder of `train.*`/`test.*` files.

    `field` is the recipe setting the name came from (`dataset_name`, `normalization_dataset`, `ptx_dataset`, ...):
    every error names it, so that the user knows which of a stage's datasets to fix.
    """
    try:
        return _load_raw_dataset(name_or_path, config, field)
    except DataError as err:
        if f"`{field}`" in str(err):
            raise
        raise DataError(f"{err} (read from `{field}`)") from err


def _load_raw_dataset(name_or_path: str, config: str | None, field: str) -> DatasetDict:
    path = Path(name_or_path)
    if path.is_file():
        if path.suffix not in LOCAL_EXTENSIONS:
            raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of {sorted(LOCAL_EXTENSIONS)}.")
        return DatasetDict({"train": _read_local_file(path)})
    if path.is_dir():
        splits = {}
        for file in sorted(path.iterdir()):
            if file.suffix in LOCAL_EXTENSIONS and file.stem in ("train", "test", "validation", "eval"):
                splits["test" if file.stem in ("validation", "eval") else file.stem] = _read_local_file(file)
        if "train" not in splits:
            raise DataError(f"{path} is a folder but holds no train.jsonl/.json/.csv/.parquet file.")
        return DatasetDict(splits)
    if path.suffix in LOCAL_EXTENSIONS or name_or_path.startswith((".", "/")):
        raise DataError(f"Dataset file {name_or_path} does not exist. Check `{field}` in your recipe.")
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        raise DataError(
            f"Dataset {name_or_path!r} is no such local file or folder, and not a valid Hub id either (Hub ids look "
            f"like 'name' or 'owner/name'). Check `{field}` (relative paths start from {os.getcwd()})."
        ) from None
    try:
        loaded = load_dataset(name_or_path, name=config)
    except (FileNotFoundError, ConnectionError) as err:
        offline = [v for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE") if os.environ.get(v, "") in ("1", "true")]
        why = (f" With {' and '.join(offline)} set, only datasets already in the local cache can be read."
               if offline else "")
        raise DataError(f"Dataset {name_or_path!r} is not a local file or folder, and could not be loaded as a Hub "
                        f"dataset: {err}.{why} Check `{field}`.") from err
    return loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})
