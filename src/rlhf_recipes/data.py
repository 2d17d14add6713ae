"""One dataset loader for every stage: a Hub id or a local file in, validated and formatted splits out.

Input formats (`--dataset_format`, detected from the columns when `auto`):
    prompt_completion  `prompt`, `completion`
    text               `text` (plain language modelling, SFT only)
    messages           `messages`: a list of `{"role", "content"}` turns
    hh                 Anthropic HH: `chosen` and `rejected` full conversations
    preference         `prompt`, `chosen`, `rejected`
    ranking            `prompt`, `responses` (a list ordered best to worst, K from 2 to 9)
    prompt             `prompt` alone (PPO and evaluation prompts)

Output per stage:
    sft     `prompt`, `completion` (or `text`)
    reward  `prompt`, `chosen`, `rejected`, or `prompt`, `responses` for rankings
    prompts `prompt` (PPO and evaluation)

Conversations (`messages`, HH `chosen`/`rejected`, `prompt`/`chosen`/`rejected` given as lists of messages) are
rendered by one renderer, `ConversationTemplate` (`conversation_template: auto|chat_template|hh`): the tokenizer's
chat template when it has one, else the plain-text HH template (GPT-2 has no chat template):

    "\\n\\nHuman: {user turn}\\n\\nAssistant: {assistant turn}\\n\\nHuman: ...\\n\\nAssistant:"

The prompt ends where the template's generation prompt ends (HH: the last "\\n\\nAssistant:"); the completion is the
final assistant turn up to and including the template's end-of-turn token, which the tokenizer loader makes the EOS.
SFT, the reward model, PPO and evaluation all see this text, so a policy is scored in the format it was trained on.
Plain strings (`prompt`, `completion`, `text`) are taken as already rendered and used as written.

Row numbers in messages are 1-based positions in the source split (for a JSONL file, its line numbers).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from datasets import Dataset, DatasetDict, load_dataset

from .config import UserError

logger = logging.getLogger(__name__)

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"
MAX_RANKING_SIZE = 9
LOCAL_EXTENSIONS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
Stage = Literal["sft", "reward", "prompts"]

FORMAT_COLUMNS: dict[str, tuple[str, ...]] = {
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
    "messages": ("messages",),
    "hh": ("chosen", "rejected"),
    "preference": ("prompt", "chosen", "rejected"),
    "ranking": ("prompt", "responses"),
    "prompt": ("prompt",),
}
STAGE_FORMATS: dict[str, tuple[str, ...]] = {
    "sft": ("prompt_completion", "text", "messages", "hh", "preference", "ranking"),
    "reward": ("hh", "preference", "ranking"),
    "prompts": ("prompt_completion", "messages", "hh", "preference", "ranking", "prompt"),
}


class DataError(UserError, ValueError):
    """A dataset problem; the message names the file, the row or column, and how to fix it."""


# What each column the formats read must hold. A wrong type stops the run (the file is wrong, not one row); a null
# or missing value is treated like an empty one (dropped or raised per `invalid_rows`).
STRING_COLUMNS = ("prompt", "completion", "text", "chosen", "rejected")
CONVERSATIONAL_COLUMNS = ("prompt", "completion", "chosen", "rejected")
LIST_COLUMNS = {"responses": "a list of strings (best first)",
                "messages": 'a list of {"role": ..., "content": ...} objects'}
SHOWN_PROBLEMS = 5
REPORT_FILE = "data_report.json"


@dataclass
class DataReport:
    """What the loader kept, dropped and noticed in one split; printed before training and saved with the run."""

    source: str
    split: str
    stage: str
    rows_read: int = 0
    kept: int = 0
    dropped: dict[str, list[int]] = field(default_factory=dict)
    noted: dict[str, list[int]] = field(default_factory=dict)
    truncated_prompts: int = 0
    truncated_responses: int = 0

    def drop(self, reason: str, row: int) -> None:
        self.dropped.setdefault(reason, []).append(row)

    def note(self, reason: str, row: int) -> None:
        self.noted.setdefault(reason, []).append(row)

    @property
    def num_dropped(self) -> int:
        return sum(len(rows) for rows in self.dropped.values())

    def summary(self) -> str:
        lines = [f"{self.source} [{self.split}] for {self.stage}: read {self.rows_read}, kept {self.kept}, "
                 f"dropped {self.num_dropped}, prompts truncated {self.truncated_prompts}, "
                 f"{'texts' if self.stage == 'ptx' else 'responses'} truncated {self.truncated_responses}"]
        for title, table in (("dropped", self.dropped), ("kept, noted", self.noted)):
            for reason, rows in table.items():
                shown = ", ".join(map(str, rows[:SHOWN_ROWS])) + (" ..." if len(rows) > SHOWN_ROWS else "")
                lines.append(f"  {title}: {len(rows)} x {reason} (rows {shown})")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "split": self.split, "stage": self.stage, "rows_read": self.rows_read,
            "kept": self.kept, "dropped": self.dropped, "noted": self.noted,
            "truncated_prompts": self.truncated_prompts, "truncated_responses": self.truncated_responses,
        }

    @property
    def changed_anything(self) -> bool:
        """Rows were dropped or cut, or kept with a quirk: worth a warning on the console, not just the log file."""
        return bool(self.dropped or self.noted or self.truncated_prompts or self.truncated_responses)


SHOWN_ROWS = 10


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


def load_raw_dataset(name_or_path: str, config: str | None = None) -> DatasetDict:
    """Load a Hub dataset id, a local file (`.jsonl/.json/.csv/.parquet`) or a folder of `train.*`/`test.*` files."""
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
        raise DataError(f"Dataset file {name_or_path} does not exist. Check `dataset_name` in your recipe.")
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        raise DataError(
            f"Dataset {name_or_path!r} is no such local file or folder, and not a valid Hub id either (Hub ids look "
            f"like 'name' or 'owner/name'). Check `dataset_name` (relative paths start from {os.getcwd()})."
        ) from None
    try:
        loaded = load_dataset(name_or_path, name=config)
    except (FileNotFoundError, ConnectionError) as err:
        offline = [v for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE") if os.environ.get(v, "") in ("1", "true")]
        why = (f" With {' and '.join(offline)} set, only datasets already in the local cache can be read."
               if offline else "")
        raise DataError(f"Dataset {name_or_path!r} is not a local file or folder, and could not be loaded as a Hub "
                        f"dataset: {err}.{why} Check `dataset_name`.") from err
    return loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})


# ----------------------------------------------------------------------------------------------------------------
# Conversation template
# ----------------------------------------------------------------------------------------------------------------
def split_hh(conversation: str) -> tuple[str, str]:
    """Split an HH conversation into (prompt up to and including the last "\\n\\nAssistant:", final response)."""
    cut = conversation.rfind(ASSISTANT)
    if cut < 0:
        raise ValueError('no "\\n\\nAssistant:" turn')
    cut += len(ASSISTANT)
    return conversation[:cut], conversation[cut:]


TEMPLATE_CHOICES = ("auto", "chat_template", "hh")


def parse_hh(conversation: str) -> list[dict[str, str]]:
    """An HH conversation ("\\n\\nHuman: ...\\n\\nAssistant: ...") as chat messages; text before the first turn is a
    system message."""
    parts = re.split(r"(\n\nHuman:|\n\nAssistant:)", conversation)
    messages = [{"role": "system", "content": parts[0].strip()}] if parts[0].strip() else []
    for marker, content in zip(parts[1::2], parts[2::2]):
        messages.append({"role": "user" if marker == HUMAN else "assistant", "content": content.strip()})
    return messages


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list):
        raise TypeError(f"must be a list of {{'role', 'content'}} messages, got {type(messages).__name__}")
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise TypeError("every message must be a {'role': ..., 'content': <string>} mapping")
        if message.get("role") not in ("system", "user", "assistant"):
            raise ValueError(f"unknown role {message.get('role')!r} (expected system, user or assistant)")


def end_of_turn_token(tokenizer) -> str | None:
    """The special token a chat template closes an assistant turn with (`<|im_end|>`, `<|eot_id|>`), or None."""
    probe = [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong"}]
    rendered = tokenizer.apply_chat_template(probe, tokenize=False)
    after = rendered[rendered.rfind("pong") + len("pong"):]
    ids = tokenizer(after, add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    return tokenizer.convert_ids_to_tokens(ids[0]) if ids and ids[0] in special else None


@dataclass(frozen=True)
class ConversationTemplate:
    """The one conversation renderer: `chat_template` (the tokenizer's) or `hh` (plain text, no tokenizer needed).

    `render_prompt` ends where the template's generation prompt ends (what PPO and generation continue);
    `render_conversation` returns that prompt and the final assistant turn, up to and including `end_of_turn` (chat
    templates) or as " {reply}" (HH, whose EOS each stage appends).
    """

    name: Literal["chat_template", "hh"] = "hh"
    tokenizer: Any = None
    end_of_turn: str | None = None

    def render_prompt(self, messages: list[dict[str, str]]) -> str:
        _check_messages(messages)
        if self.name == "chat_template":
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        parts = []
        for message in messages:
            role, content = message["role"], message["content"].strip()
            parts.append(content if role == "system" else f"{HUMAN if role == 'user' else ASSISTANT} {content}")
        return "".join(parts) + ASSISTANT

    def render_conversation(self, messages: list[dict[str, str]]) -> tuple[str, str]:
        _check_messages(messages)
        if not messages or messages[-1]["role"] != "assistant":
            raise ValueError("the last message must be the assistant's")
        prompt = self.render_prompt(messages[:-1])
        reply = messages[-1]["content"]
        if self.name == "hh":
            return prompt, " " + reply.strip()
        full = self.tokenizer.apply_chat_template(messages, tokenize=False)
        if not full.startswith(prompt):
            raise ValueError("the chat template renders the turns before the reply differently with and without the "
                             "generation prompt, so no prompt is a prefix of the conversation; set "
                             "`conversation_template: hh` or fix the template")
        completion = full[len(prompt):]
        if self.end_of_turn:  # stop at the end-of-turn token: what the policy generates, and where the RM reads
            content_end = completion.find(reply.strip())
            content_end = content_end + len(reply.strip()) if content_end >= 0 else 0
            cut = completion.find(self.end_of_turn, content_end)
            if cut >= 0:
                completion = completion[: cut + len(self.end_of_turn)]
        return prompt, completion

    def reply_text(self, completion: str) -> str:
        """A rendered completion without its end-of-turn token: what the assistant said."""
        return completion.removesuffix(self.end_of_turn) if self.end_of_turn else completion

    def split_hh(self, conversation: str) -> tuple[str, str]:
        """An HH conversation as (prompt, final reply): cut as written (HH), or parsed and rendered (chat template)."""
        if self.name == "hh":
            return split_hh(conversation)
        return self.render_conversation(parse_hh(conversation))


def resolve_template(tokenizer=None, choice: str = "auto") -> ConversationTemplate:
    """`auto`: the tokenizer's chat template when it has one, HH otherwise (also when no tokenizer is given)."""
    if choice not in TEMPLATE_CHOICES:
        raise ValueError(f"conversation_template must be one of {TEMPLATE_CHOICES}, got {choice!r}.")
    has_template = tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))
    if choice == "chat_template" and not has_template:
        name = getattr(tokenizer, "name_or_path", None) or "no tokenizer"
        raise ValueError(f"conversation_template is 'chat_template' but the tokenizer of {name} has no chat template. "
                         "Use `conversation_template: hh` (or auto), or save a tokenizer with a `chat_template`.")
    if choice == "hh" or not has_template:
        return ConversationTemplate("hh")
    return ConversationTemplate("chat_template", tokenizer, end_of_turn_token(tokenizer))


def render_prompt(messages: list[dict[str, str]], tokenizer=None, template: str = "auto") -> str:
    """The turns before an assistant reply, ending where the template's generation prompt ends."""
    return resolve_template(tokenizer, template).render_prompt(messages)


def render_conversation(messages: list[dict[str, str]], tokenizer=None, template: str = "auto") -> tuple[str, str]:
    """(prompt, final assistant turn) of a conversation ending with the assistant's reply; see `ConversationTemplate`."""
    return resolve_template(tokenizer, template).render_conversation(messages)


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of rendered text, with one BOS where the tokenizer uses one: a chat template writes its BOS into the
    text, so the tokenizer adds its own (if it adds one at all) only when the text does not already start with it."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos) and bos in tokenizer("", add_special_tokens=True)["input_ids"]:
        ids = [bos, *ids]
    return ids


# ----------------------------------------------------------------------------------------------------------------
# Formatting and validation
# ----------------------------------------------------------------------------------------------------------------
def detect_format(columns: Iterable[str], source: str, stage: Stage) -> str:
    columns = set(columns)
    for fmt in ("ranking", "preference", "hh", "prompt_completion", "messages", "text", "prompt"):
        if fmt in STAGE_FORMATS[stage] and set(FORMAT_COLUMNS[fmt]) <= columns:
            return fmt
    expected = " or ".join("/".join(FORMAT_COLUMNS[f]) for f in STAGE_FORMATS[stage])
    raise DataError(
        f"{source}: no usable columns for the {stage} stage. Found columns {sorted(columns)}; expected {expected}. "
        "Rename the columns or set `dataset_format`."
    )


def _check_columns(columns: Iterable[str], fmt: str, source: str, stage: Stage) -> None:
    if fmt not in STAGE_FORMATS[stage]:
        raise DataError(
            f"{source}: dataset_format {fmt!r} cannot feed the {stage} stage; use one of {STAGE_FORMATS[stage]}."
        )
    missing = [c for c in FORMAT_COLUMNS[fmt] if c not in set(columns)]
    if missing:
        raise DataError(
            f"{source}: missing column(s) {missing} for dataset_format {fmt!r}; found {sorted(columns)}. Rename the "
            "columns in the file or choose the matching `dataset_format`."
        )


class _RowProblem(Exception):
    """A row the stage cannot use: dropped or raised as `DataError`, as the user chose."""


def _text(row: dict, column: str) -> str:
    value = row.get(column)
    if value is None:
        raise _RowProblem(f"no value in column '{column}'")
    if not isinstance(value, str):
        raise _RowProblem(f"column '{column}' must be a string, got {type(value).__name__}")
    return value


def _split_conversation(conversation: str, column: str, template: ConversationTemplate) -> tuple[str, str]:
    if ASSISTANT not in conversation:
        raise _RowProblem(f"'{column}' has no \"\\n\\nAssistant:\" turn")
    try:
        return template.split_hh(conversation)
    except (ValueError, TypeError) as err:
        raise _RowProblem(f"'{column}': {err}") from err


def _render(column: str, render: Callable, messages: Any) -> Any:
    try:
        return render(messages)
    except (ValueError, TypeError, AttributeError, KeyError) as err:
        raise _RowProblem(f"'{column}' {err}") from err


def _prompt_of(row: dict, template: ConversationTemplate) -> str:
    """`prompt` as written (text), or rendered up to the generation prompt (a list of messages)."""
    if isinstance(row["prompt"], list):
        return _render("prompt", template.render_prompt, row["prompt"])
    return _text(row, "prompt")


def _pair_side(row: dict, column: str, template: ConversationTemplate) -> tuple[str, str]:
    """(prompt, reply) of `chosen`/`rejected`: text as written, or a list of messages rendered as a conversation: the
    whole conversation (UltraFeedback's layout), or the reply alone after the `prompt` turns (TRL's layout)."""
    value = row[column]
    if not isinstance(value, list):
        return _prompt_of(row, template), _text(row, column)
    if len(value) == 1:
        prompt = row["prompt"]
        value = (prompt if isinstance(prompt, list) else [{"role": "user", "content": _text(row, "prompt")}]) + value
    return _render(column, template.render_conversation, value)


def _format_sft(row: dict, fmt: str, report: DataReport, row_number: int,
                template: ConversationTemplate) -> dict[str, str]:
    if fmt == "text":
        text = _text(row, "text")
        if not text.strip():
            raise _RowProblem("empty text")
        return {"text": text}
    if fmt == "prompt_completion":
        prompt, completion = _prompt_of(row, template), _text(row, "completion")
    elif fmt == "messages":
        prompt, completion = _render("messages", template.render_conversation, row["messages"])
    elif fmt == "hh":
        prompt, completion = _split_conversation(_text(row, "chosen"), "chosen", template)
    elif fmt == "preference":
        prompt, completion = _pair_side(row, "chosen", template)
    else:  # ranking: learn from the best response
        responses = row["responses"]
        if not isinstance(responses, list) or not responses:
            raise _RowProblem("'responses' must be a non-empty list")
        prompt, completion = _prompt_of(row, template), str(responses[0])
    if not prompt.strip():
        raise _RowProblem("empty prompt")
    if not template.reply_text(completion).strip():
        raise _RowProblem("empty completion (SFT has nothing to learn from it)")
    return {"prompt": prompt, "completion": completion}


def _format_reward(row: dict, fmt: str, report: DataReport, row_number: int,
                   template: ConversationTemplate) -> dict[str, Any]:
    if fmt == "ranking":
        responses = row["responses"]
        if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
            raise _RowProblem("'responses' must be a list of strings ordered best to worst")
        if len(responses) < 2:
            raise _RowProblem("a ranking needs at least two responses")
        if len(responses) > MAX_RANKING_SIZE:
            raise _RowProblem(f"a ranking has at most {MAX_RANKING_SIZE} responses (InstructGPT's K)")
        if len(set(responses)) < len(responses):
            raise _RowProblem("a ranking repeats a response")
        prompt = _prompt_of(row, template)
        if not prompt.strip():
            raise _RowProblem("empty prompt")
        if not responses[0].strip():
            report.note("empty preferred response", row_number)
        return {"prompt": prompt, "responses": responses}
    if fmt == "hh":
        chosen, rejected = _text(row, "chosen"), _text(row, "rejected")
        if chosen == rejected:
            raise _RowProblem("chosen equals rejected")
        prompt, chosen_reply = _split_conversation(chosen, "chosen", template)
        rejected_prompt, rejected_reply = _split_conversation(rejected, "rejected", template)
    else:  # preference
        prompt, chosen_reply = _pair_side(row, "chosen", template)
        rejected_prompt, rejected_reply = _pair_side(row, "rejected", template)
        if chosen_reply == rejected_reply and prompt == rejected_prompt:
            raise _RowProblem("chosen equals rejected")
        if not prompt.strip():
            raise _RowProblem("empty prompt")
    if rejected_prompt != prompt:
        # Real HH has a few pairs that part before the last turn: compare them as whole conversations.
        report.note("pair differs before the final assistant turn (compared as whole conversations)", row_number)
        prompt, chosen_reply, rejected_reply = "", prompt + chosen_reply, rejected_prompt + rejected_reply
    if not template.reply_text(chosen_reply).strip():
        report.note("empty preferred response", row_number)
    return {"prompt": prompt, "chosen": chosen_reply, "rejected": rejected_reply}


def _format_prompt(row: dict, fmt: str, report: DataReport, row_number: int,
                   template: ConversationTemplate) -> dict[str, str]:
    if fmt == "hh":
        prompt, _ = _split_conversation(_text(row, "chosen"), "chosen", template)
    elif fmt == "messages":
        messages = row["messages"]
        if isinstance(messages, list) and messages and isinstance(messages[-1], dict) \
                and messages[-1].get("role") == "assistant":
            messages = messages[:-1]
        prompt = _render("messages", template.render_prompt, messages)
    elif fmt == "preference" and isinstance(row["chosen"], list):
        prompt, _ = _pair_side(row, "chosen", template)
    else:
        prompt = _prompt_of(row, template)
    if not prompt.strip():
        raise _RowProblem("empty prompt")
    return {"prompt": prompt}


FORMATTERS: dict[str, Callable[[dict, str, DataReport, int, ConversationTemplate], dict[str, Any]]] = {
    "sft": _format_sft,
    "reward": _format_reward,
    "prompts": _format_prompt,
}


def format_split(
    dataset: Dataset,
    *,
    stage: Stage,
    fmt: str,
    source: str,
    split: str,
    invalid_rows: str = "drop",
    tokenizer=None,
    max_prompt_tokens: int | None = None,
    prompt_overflow: str = "truncate_left",
    max_length: int | None = None,
    template: ConversationTemplate | None = None,
) -> tuple[Dataset, DataReport]:
    """Validate and format one split for `stage`; return the clean split and its report.

    Conversations are rendered with `template` (HH when None). With a tokenizer and `max_length`, responses that will
    not fit beside their prompt (plus EOS) are counted in the report as truncated (the trainers cut them).
    """
    template = template or ConversationTemplate()
    report = DataReport(source=source, split=split, stage=stage, rows_read=len(dataset))
    formatter = FORMATTERS[stage]
    columns = FORMAT_COLUMNS[fmt]
    rows, type_problems = [], []
    for index, row in enumerate(dataset):
        row_number = index + 1
        problems = [f"row {row_number}, column '{c}': {p}" for c in columns
                    if (p := column_type_problem(c, row.get(c)))]
        if problems:  # a wrong type is a broken file, not a row to drop: collected, then the run is refused
            type_problems += problems
            continue
        if type_problems:
            continue
        try:
            formatted = formatter(row, fmt, report, row_number, template)
            if max_prompt_tokens is not None and tokenizer is not None and "prompt" in formatted:
                formatted["prompt"] = _fit_prompt(formatted["prompt"], tokenizer, max_prompt_tokens,
                                                  prompt_overflow, report, row_number)
        except _RowProblem as problem:
            if invalid_rows == "error":
                raise DataError(
                    f"{source} [{split}], row {row_number}: {problem}. Fix the row, or set `invalid_rows: drop` to "
                    "skip such rows with a report."
                ) from None
            report.drop(str(problem), row_number)
            continue
        if tokenizer is not None and max_length is not None and _response_overflows(formatted, tokenizer, max_length):
            report.truncated_responses += 1
        rows.append(formatted)
    _raise_type_problems(type_problems, f"{source} [{split}]")
    report.kept = len(rows)
    if not rows:
        raise DataError(f"{source} [{split}]: no usable rows for the {stage} stage.\n{report.summary()}")
    return Dataset.from_list(rows), report


def _response_overflows(formatted: dict[str, Any], tokenizer, max_length: int) -> bool:
    """Whether a response of this row will be cut: prompt + response + EOS longer than `max_length` tokens."""
    responses = formatted.get("responses") or [formatted[k] for k in ("completion", "chosen", "rejected", "text")
                                               if k in formatted]
    prompt = formatted.get("prompt", "")
    prompt_tokens = len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) if prompt else 0
    return any(prompt_tokens + len(tokenizer(r, add_special_tokens=False)["input_ids"]) + 1 > max_length
               for r in responses)


def _fit_prompt(prompt: str, tokenizer, limit: int, overflow: str, report: DataReport, row_number: int) -> str:
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if len(ids) <= limit:
        return prompt
    if overflow == "error":
        raise DataError(
            f"{report.source} [{report.split}], row {row_number}: the prompt has {len(ids)} tokens, more than the "
            f"{limit} the context leaves for it. Set `prompt_overflow: truncate_left` or `drop`, or raise `max_length`."
        )
    if overflow == "drop":
        raise _RowProblem(f"prompt longer than {limit} tokens")
    report.truncated_prompts += 1
    # Keep the end (the last turn and the "Assistant:" cue) as a suffix of the text. Decoding the last `limit` ids
    # instead can start inside a multi-byte character: a "\ufffd" that re-tokenizes to more than `limit` tokens.
    if getattr(tokenizer, "is_fast", False):
        offsets = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        for start, _ in offsets[len(ids) - limit:]:
            suffix = prompt[start:]
            if len(tokenizer(suffix, add_special_tokens=False)["input_ids"]) <= limit:
                return suffix
    return tokenizer.decode(ids[-limit:])


# ----------------------------------------------------------------------------------------------------------------
# The entry point every stage calls
# ----------------------------------------------------------------------------------------------------------------
def load_stage_dataset(
    script_args,
    stage: Stage,
    *,
    tokenizer=None,
    max_prompt_tokens: int | None = None,
    seed: int = 42,
    dataset_name: str | None = None,
    max_length: int | None = None,
    report_dir: str | os.PathLike | None = None,
) -> tuple[DatasetDict, list[DataReport]]:
    """Load `script_args.dataset_name` (or `dataset_name`) and return `{train, test?}` formatted for `stage`.

    Reads `dataset_format`, `dataset_train_split`, `dataset_test_split`, `eval_split_size`, `max_train_samples`,
    `max_eval_samples`, `invalid_rows`, `prompt_overflow` and `conversation_template` from `script_args`;
    conversations are rendered with `tokenizer`'s chat template unless that says `hh` (or there is none). With
    `max_length`, responses the trainer will cut are counted. With `report_dir` the reports are saved there
    (`data_report.json`) at once; a report that dropped, cut or noted rows is printed at WARNING level with that path.
    """
    template = resolve_template(tokenizer, getattr(script_args, "conversation_template", "auto"))
    name = dataset_name or script_args.dataset_name
    if not name:
        raise DataError("No dataset given: set `dataset_name` (a Hub id or a local file) in the recipe.")
    raw = load_raw_dataset(name, getattr(script_args, "dataset_config", None))
    train_split = script_args.dataset_train_split
    test_split = script_args.dataset_test_split
    if train_split not in raw:
        raise DataError(f"{name}: no split {train_split!r} (found {list(raw)}). Set `dataset_train_split`.")
    fmt = script_args.dataset_format
    if fmt == "auto":
        fmt = detect_format(raw[train_split].column_names, name, stage)
    _check_columns(raw[train_split].column_names, fmt, name, stage)
    logger.info("%s: %s rows, conversations rendered with the %s template.", name, fmt,
                "tokenizer's chat" if template.name == "chat_template" else "HH")

    selected = {"train": raw[train_split]}
    if test_split in raw:
        selected["test"] = raw[test_split]
    caps = {"train": script_args.max_train_samples, "test": script_args.max_eval_samples}
    result, reports = {}, []
    for split, dataset in selected.items():
        if caps[split] is not None:
            dataset = dataset.select(range(min(caps[split], len(dataset))))
        _check_columns(dataset.column_names, fmt, f"{name} [{split}]", stage)
        result[split], report = format_split(
            dataset, stage=stage, fmt=fmt, source=name, split=split, invalid_rows=script_args.invalid_rows,
            tokenizer=tokenizer, max_prompt_tokens=max_prompt_tokens, prompt_overflow=script_args.prompt_overflow,
            max_length=max_length, template=template,
        )
        reports.append(report)
    path = None
    if report_dir is not None:
        try:
            path = save_reports(reports, report_dir)
        except OSError as err:  # found now, before training, rather than at the first checkpoint
            raise UserError(f"Cannot write to the output folder {report_dir}: {err}. Choose a writable "
                            "`output_dir` (and check the disk is not full).") from err
    for report in reports:
        log_report(report, path)
    if "test" not in result and script_args.eval_split_size > 0:
        parts = result["train"].train_test_split(test_size=script_args.eval_split_size, seed=seed)
        result = {"train": parts["train"], "test": parts["test"]}
    return DatasetDict(result), reports


def log_report(report: DataReport, path: str | os.PathLike | None = None) -> None:
    """The report on the console: WARNING when rows were dropped, cut or noted (so nobody misses it), else INFO."""
    where = f"\n  full report: {path}" if path is not None else ""
    if report.changed_anything:
        logger.warning("Data report: %s%s", report.summary(), where)
    else:
        logger.info("Data report: %s%s", report.summary(), where)


def save_reports(reports: list[DataReport], output_dir: str | os.PathLike) -> Path:
    """Write the data reports beside the run's checkpoints (`data_report.json`), atomically (every rank may)."""
    path = Path(output_dir) / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{REPORT_FILE}.{os.getpid()}")
    staging.write_text(json.dumps([r.to_dict() for r in reports], indent=2) + "\n")
    os.replace(staging, path)
    return path


def tokenize_prompts(dataset: Dataset, tokenizer) -> Dataset:
    """Add `input_ids` of each prompt (`encode_text`: no EOS, one BOS where the tokenizer uses one)."""
    return dataset.map(lambda row: {"input_ids": encode_text(tokenizer, row["prompt"])}, desc="Tokenizing prompts")


def tokenize_texts(name_or_path: str, tokenizer, max_length: int, template: ConversationTemplate | None = None
                   ) -> Dataset:
    """Pretraining-style text for PPO-ptx, cut to `max_length` tokens and ended with EOS: a `text` column, or
    prompt + completion, or the conversations of `messages` or HH `chosen` rendered with `template` (HH when None).

    Rows without text are dropped and texts longer than `max_length` cut; both are reported (WARNING level).
    """
    template = template or ConversationTemplate()
    raw = load_raw_dataset(name_or_path)["train"]
    columns = set(raw.column_names)
    if "text" in columns:
        def text_of(row):
            return row["text"]
    elif {"prompt", "completion"} <= columns:
        def text_of(row):
            prompt, completion = row["prompt"], row["completion"]
            return prompt + completion if isinstance(prompt, str) and isinstance(completion, str) else None
    elif "messages" in columns:
        def text_of(row):
            messages = row["messages"]
            return "".join(template.render_conversation(messages)) if isinstance(messages, list) and messages \
                else None
    elif "chosen" in columns:  # HH-style preference data: the preferred conversations are demonstrations
        def text_of(row):
            chosen = row["chosen"]
            if template.name == "chat_template" and isinstance(chosen, str):
                return "".join(template.split_hh(chosen)) if ASSISTANT in chosen else None
            return chosen
    else:
        raise DataError(f"{name_or_path}: the ptx dataset needs a `text` column (or `prompt` and `completion`, "
                        f"`messages`, or HH `chosen`); found {sorted(columns)}.")
    report = DataReport(source=name_or_path, split="train", stage="ptx", rows_read=len(raw))
    eos = tokenizer.eos_token
    ids = []
    for row_number, row in enumerate(raw, start=1):
        text = text_of(row)
        if not isinstance(text, str) or not text.strip():
            report.drop("no text", row_number)
            continue
        tokens = encode_text(tokenizer, text if text.endswith(eos) else text + eos)
        if len(tokens) > max_length:
            report.truncated_responses += 1
        ids.append(tokens[:max_length])
    report.kept = len(ids)
    if not ids:
        raise DataError(f"{name_or_path}: no usable ptx text.\n{report.summary()}")
    log_report(report)
    return Dataset.from_dict({"input_ids": ids})
