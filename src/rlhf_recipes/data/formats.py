"""Per-stage formats: detect the input format, check each row and turn it into what the stage trains on, and the
entry point every stage calls (`load_stage_dataset`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from typing import Any, Literal

from datasets import Dataset, DatasetDict

from ..config import UserError
from .rankings import PAIR_SELECTIONS, ranking_pairs, ties_problem
from .reading import DataError, _raise_type_problems, column_type_problem, load_raw_dataset
from .report import DataReport, log_report, save_reports
from .templates import ASSISTANT, ConversationTemplate, encode_text, resolve_template

logger = logging.getLogger("rlhf_recipes.data")

MAX_RANKING_SIZE = 9
Stage = Literal["sft", "reward", "dpo", "prompts"]

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
    "dpo": ("hh", "preference", "ranking"),
    "prompts": ("prompt_completion", "messages", "hh", "preference", "ranking", "prompt"),
}


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


def _format_dpo(row: dict, fmt: str, report: DataReport, row_number: int,
                template: ConversationTemplate) -> dict[str, Any]:
    """Pairs as the reward model reads them; a ranking keeps its responses and optional `ties` (0-based groups of
    equally good adjacent responses) until `load_stage_dataset` turns it into the pairs `pair_selection` picks."""
    formatted = _format_reward(row, fmt, report, row_number, template)
    if fmt == "ranking":
        ties = row.get("ties")
        problem = ties_problem(ties, len(formatted["responses"]))
        if problem:
            raise _RowProblem(problem)
        formatted["ties"] = [list(group) for group in ties or []]
    return formatted


def rankings_to_pairs(dataset: Dataset, selection: str = "all") -> Dataset:
    """`prompt`, `responses` (best first) and `ties` rows -> one `prompt`, `chosen`, `rejected` row per pair that
    `selection` takes from each ranking (`rankings.ranking_pairs`: all, best_vs_rest, best_vs_worst; tied responses
    are never paired with each other). Pair rows pass through unchanged."""
    if "responses" not in dataset.column_names:
        return dataset
    if selection not in PAIR_SELECTIONS:
        raise ValueError(f"pair selection must be one of {PAIR_SELECTIONS}, got {selection!r}")

    def expand(batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {"prompt": [], "chosen": [], "rejected": []}
        for prompt, responses, ties in zip(batch["prompt"], batch["responses"],
                                           batch.get("ties") or [None] * len(batch["prompt"])):
            for winner, loser in ranking_pairs(len(responses), ties or None, selection):
                out["prompt"].append(prompt)
                out["chosen"].append(responses[winner])
                out["rejected"].append(responses[loser])
        return out

    return dataset.map(expand, batched=True, remove_columns=dataset.column_names,
                       desc=f"Rankings to pairs ({selection})")


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
    "dpo": _format_dpo,
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
    pair_selection: str = "all",
) -> tuple[DatasetDict, list[DataReport]]:
    """Load `script_args.dataset_name` (or `dataset_name`) and return `{train, test?}` formatted for `stage`.

    Reads `dataset_format`, `dataset_train_split`, `dataset_test_split`, `eval_split_size`, `max_train_samples`,
    `max_eval_samples`, `invalid_rows`, `prompt_overflow` and `conversation_template` from `script_args`;
    conversations are rendered with `tokenizer`'s chat template unless that says `hh` (or there is none). With
    `max_length`, responses the trainer will cut are counted. With `report_dir` the reports are saved there
    (`data_report.json`) at once; a report that dropped, cut or noted rows is printed at WARNING level with that path.

    The `dpo` stage returns `prompt`, `chosen`, `rejected` pairs: a ranking becomes the pairs `pair_selection` picks
    (`all`, `best_vs_rest`, `best_vs_worst`; see `rankings.ranking_pairs`), after the held-out split is made, so the
    pairs of one ranking never land on both sides of it. Each report counts its split's pairs.
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
    if "test" not in result and script_args.eval_split_size > 0:
        parts = result["train"].train_test_split(test_size=script_args.eval_split_size, seed=seed)
        result = {"train": parts["train"], "test": parts["test"]}
    if stage == "dpo":
        carved = "test" not in selected  # a held-out part of train: its pairs count in train's report
        result = {split: rankings_to_pairs(dataset, pair_selection) for split, dataset in result.items()}
        for split, report in zip(selected, reports):
            report.pairs = len(result[split]) + (len(result["test"]) if carved and "test" in result else 0)
        for split, dataset in result.items():
            if len(dataset) == 0:
                raise DataError(f"{name} [{split}]: no pairs left for the dpo stage (are its rankings tied "
                                "throughout?). Check the `ties` column, or choose another `ranking_pairs`.")
    path = None
    if report_dir is not None:
        try:
            path = save_reports(reports, report_dir)
        except OSError as err:  # found now, before training, rather than at the first checkpoint
            raise UserError(f"Cannot write to the output folder {report_dir}: {err}. Choose a writable "
                            "`output_dir` (and check the disk is not full).") from err
    for report in reports:
        log_report(report, path)
    return DatasetDict(result), reports



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
