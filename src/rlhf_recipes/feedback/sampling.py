"""InstructGPT step 2, first half: K distinct answers per prompt from the current policy, scored by the RM.

`run_sampling` is `recipes/sample.py`. Output rows (`--output_file`, JSONL, one per prompt):
`{"id", "prompt", "responses", "rm_scores", "policy", "sampling"}`. `id` is a hash of the rendered prompt, so it
is the same in every run; a rerun skips ids already written, so a killed run resumes where it stopped (each row is
appended whole, flushed and fsynced under a file lock: killing the loop between or inside rows loses at most the
row being written, which a damaged-tail check sets aside). Under `accelerate launch` every process takes every
`world_size`-th prompt and appends to the same file.

Prompt hygiene (Ouyang et al. 2022, section 3.2): prompts that share a long common prefix are deduplicated
(the prefix every prompt shares, e.g. a chat template's system turn, is ignored first), and when the data has a
user/source column at most `max_prompts_per_user` prompts per value are kept. What was dropped is printed and
saved to `<output_file stem>.report.json`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data import encode_text
from .jsonl import AppendLog

logger = logging.getLogger(__name__)

USER_COLUMNS = ("user_id", "user", "source", "author")


@dataclass
class SampleArguments:
    """Arguments of `recipes/sample.py` (prompts: `ScriptArguments.dataset_name`; policy: `model_name_or_path`)."""

    output_file: str = field(default="runs/samples.jsonl", metadata={"help": "JSONL to write (appended, resumable)."})
    num_responses_per_prompt: int = field(default=4, metadata={"range": "[2, 9]",
        "help": "K distinct answers per prompt (2..9)."})
    reward_model_path: str | None = field(default=None, metadata={"role": "reward",
        "help": "Score each answer with this (normalised) "
                "reward model (rm_scores); none: null."})
    max_new_tokens: int = field(default=64, metadata={"range": "[1, inf)", "help": "Longest answer, in tokens."})
    temperature: float = field(default=1.0, metadata={"range": "(0, inf)",
        "help": "Sampling temperature (1.0: the policy's own "
                "distribution, what PPO samples from)."})
    top_p: float = field(default=1.0, metadata={"range": "(0, 1]", "help": "Nucleus sampling (1.0: off)."})
    batch_size: int = field(default=8, metadata={"range": "[1, inf)",
        "help": "Prompts per generate() call (x K sequences)."})
    max_prompts: int | None = field(default=None, metadata={"range": "[1, inf)",
        "help": "Keep only the first N prompts after hygiene."})
    max_attempts: int = field(default=4, metadata={"range": "[1, inf)",
        "help": "Draws per prompt to find K distinct answers."})
    dedupe_prefix_chars: int = field(default=100, metadata={"range": "[0, inf)",
        "help": "Drop a prompt that shares this many leading "
                "characters (or all of the shorter) with an "
                "earlier one; 0: exact duplicates only."})
    user_column: str | None = field(default=None, metadata={"help": f"Column naming the prompt's user/source "
                                                                    f"(default: the first of {USER_COLUMNS})."})
    max_prompts_per_user: int = field(default=200, metadata={"range": "[1, inf)",
        "help": "Cap per user/source (InstructGPT: 200)."})
    seed: int = field(default=0, metadata={"range": "[0, 4294967295]",
        "help": "Sampling seed (offset by the process index)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the Hub."})

    def __post_init__(self):
        from ..ranges import check_arguments

        check_arguments(self)


def prompt_id(prompt: str) -> str:
    """Stable id of a prompt: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


def cap_per_user(users: list[Any], cap: int) -> tuple[list[int], list[int]]:
    """Indices kept (the first `cap` of each user, in order) and dropped."""
    seen: Counter = Counter()
    kept, dropped = [], []
    for index, user in enumerate(users):
        seen[user] += 1
        (kept if seen[user] <= cap else dropped).append(index)
    return kept, dropped


def dedupe_common_prefix(prompts: list[str], min_chars: int) -> tuple[list[int], dict[int, int]]:
    """Keep the first of every group of prompts sharing `min_chars` leading characters (or the whole shorter one).

    Characters every prompt shares (a template's system turn) do not count. Returns the kept indices (in order)
    and, for each dropped index, the index of the kept prompt it duplicates.
    """
    if not prompts:
        return [], {}
    shared = len(os.path.commonprefix(prompts)) if len(prompts) > 1 else 0
    bodies = [p[shared:] for p in prompts]
    by_text = sorted(range(len(prompts)), key=lambda i: (bodies[i], i))
    groups = [[by_text[0]]]  # sorting puts prompts with a long common prefix next to each other
    for prev, cur in zip(by_text, by_text[1:]):
        a, b = bodies[prev], bodies[cur]
        common = len(os.path.commonprefix([a, b]))
        if common >= min(len(a), len(b)) or (min_chars > 0 and common >= min_chars):
            groups[-1].append(cur)
        else:
            groups.append([cur])
    dropped = {i: min(group) for group in groups for i in group if i != min(group)}
    kept = [i for i in range(len(prompts)) if i not in dropped]
    return kept, dropped


def load_prompts(script_args, args: SampleArguments, tokenizer, max_prompt_tokens: int | None
                 ) -> tuple[list[str], dict[str, Any]]:
    """Prompts of `dataset_name` through the project's loader and renderer, with InstructGPT's hygiene."""
    from ..data import DataError, detect_format, format_split, load_raw_dataset, resolve_template

    name = script_args.dataset_name
    raw = load_raw_dataset(name, getattr(script_args, "dataset_config", None))
    split = script_args.dataset_train_split
    if split not in raw:
        raise DataError(f"{name}: no split {split!r} (found {list(raw)}). Set `dataset_train_split`.")
    dataset = raw[split]
    report: dict[str, Any] = {"source": name, "split": split, "rows_read": len(dataset)}
    column = args.user_column or next((c for c in USER_COLUMNS if c in dataset.column_names), None)
    if args.user_column and args.user_column not in dataset.column_names:
        raise DataError(f"{name}: no column {args.user_column!r} for `user_column` (found {dataset.column_names}).")
    if column:
        kept, dropped = cap_per_user(dataset[column], args.max_prompts_per_user)
        report["per_user_cap"] = {"column": column, "cap": args.max_prompts_per_user, "users": len(set(dataset[column])),
                                  "dropped_rows": [i + 1 for i in dropped]}
        dataset = dataset.select(kept)
    fmt = script_args.dataset_format
    if fmt == "auto":
        fmt = detect_format(dataset.column_names, name, "prompts")
    formatted, data_report = format_split(dataset, stage="prompts", fmt=fmt, source=name, split=split,
                                          invalid_rows=script_args.invalid_rows, tokenizer=tokenizer,
                                          max_prompt_tokens=max_prompt_tokens,
                                          prompt_overflow=script_args.prompt_overflow,
                                          template=resolve_template(tokenizer, script_args.conversation_template))
    report["data"] = data_report.to_dict()
    prompts = list(formatted["prompt"])
    kept, duplicates = dedupe_common_prefix(prompts, args.dedupe_prefix_chars)
    report["deduplicated"] = {"prefix_chars": args.dedupe_prefix_chars, "dropped": len(duplicates),
                              "examples": [{"dropped": prompts[d][:120], "kept": prompts[k][:120]}
                                           for d, k in list(duplicates.items())[:5]]}
    prompts = [prompts[i] for i in kept]
    if args.max_prompts is not None:
        prompts = prompts[: args.max_prompts]
    report["prompts"] = len(prompts)
    return prompts, report


def report_summary(report: dict[str, Any]) -> str:
    lines = [f"{report['source']} [{report['split']}]: read {report['rows_read']}, {report['prompts']} prompts to "
             "sample"]
    cap = report.get("per_user_cap")
    if cap:
        lines.append(f"  per-user cap: {len(cap['dropped_rows'])} rows dropped (more than {cap['cap']} per "
                     f"'{cap['column']}', {cap['users']} users)")
    data = report["data"]
    for reason, rows in data["dropped"].items():
        lines.append(f"  dropped {len(rows)} x {reason}")
    if data["truncated_prompts"]:
        lines.append(f"  {data['truncated_prompts']} prompts cut from the left to fit the context")
    lines.append(f"  {report['deduplicated']['dropped']} near-duplicates dropped (common prefix >= "
                 f"{report['deduplicated']['prefix_chars']} characters)")
    if "already_written" in report:
        lines.append(f"  {report['already_written']} already in the output file (resumed)")
    return "\n".join(lines)


@torch.no_grad()
def sample_distinct(model, tokenizer, prompts: list[str], *, k: int, max_new_tokens: int, temperature: float,
                    top_p: float, max_attempts: int) -> list[list[list[int]]]:
    """For each prompt, up to `k` answers (token ids, ending with EOS when the model stopped) with distinct text."""
    from transformers import GenerationConfig

    from ..evaluation import _left_pad
    from ..ppo.core import truncate_after_stop_token

    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature, top_p=top_p,
                              top_k=0, eos_token_id=eos, pad_token_id=pad, num_return_sequences=k)
    answers: list[list[list[int]]] = [[] for _ in prompts]
    texts: list[set[str]] = [set() for _ in prompts]
    ids = [encode_text(tokenizer, p) for p in prompts]
    todo = list(range(len(prompts)))
    for _ in range(max_attempts):
        if not todo:
            break
        queries = _left_pad([ids[i] for i in todo], pad).to(model.device)
        out = model.generate(input_ids=queries, attention_mask=(queries != pad).long(), generation_config=config)
        responses = truncate_after_stop_token(out[:, queries.shape[1]:], eos, pad)
        for row, response in enumerate(responses.tolist()):
            i = todo[row // k]
            tokens = [t for t in response if t != pad]
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            if len(answers[i]) < k and text not in texts[i]:
                texts[i].add(text)
                answers[i].append(tokens)
        todo = [i for i in todo if len(answers[i]) < k]
    return answers


@torch.no_grad()
def score_answers(reward_model, tokenizer, prompt: str, answers: list[list[int]]) -> list[float]:
    """Normalised RM scores r(x, y) of each answer, read at its last token (the EOS) as PPO reads them."""
    from ..evaluation import _left_pad
    from ..models import reward_scores

    pad = tokenizer.pad_token_id
    query = encode_text(tokenizer, prompt)
    width = max(len(a) for a in answers)
    responses = torch.tensor([a + [pad] * (width - len(a)) for a in answers], dtype=torch.long)
    queries = _left_pad([query] * len(answers), pad)
    sequences = torch.cat([queries, responses], 1).to(reward_model.device)
    return [round(s, 4) for s in reward_scores(reward_model, sequences, (sequences != pad).long()).tolist()]


def policy_identity(model_args, model) -> dict[str, str | None]:
    """Which policy wrote the answers: its path or Hub id, and the revision (the Hub commit when known)."""
    commit = getattr(model.config, "_commit_hash", None)
    return {"name_or_path": model_args.model_name_or_path, "revision": commit or model_args.model_revision}


def run_sampling(script_args, args: SampleArguments, model_args) -> dict[str, Any]:
    """Write K distinct answers for every prompt not yet in `args.output_file`; return the report."""
    from accelerate import PartialState
    from tqdm.auto import tqdm
    from transformers import set_seed

    from ..models import check_same_tokenizer, context_length, load_model, load_tokenizer

    state = PartialState()
    remote = args.trust_remote_code
    tokenizer = load_tokenizer(model_args.model_name_or_path, revision=model_args.model_revision,
                               trust_remote_code=remote, padding_side="left",
                               conversation_template=script_args.conversation_template)
    # The prompts are read and checked before any model loads (the context comes from the config alone).
    context = context_length(model_args.model_name_or_path, revision=model_args.model_revision,
                             trust_remote_code=remote)
    max_prompt_tokens = context - args.max_new_tokens if context else None
    prompts, report = load_prompts(script_args, args, tokenizer, max_prompt_tokens)
    log = AppendLog(args.output_file)  # what an earlier run wrote (a damaged tail set aside), also before the models
    model = load_model(model_args, tokenizer, model_name_or_path=model_args.model_name_or_path,
                       trust_remote_code=remote, apply_lora=False).to(state.device).eval()
    reward_model = None
    if args.reward_model_path:
        check_same_tokenizer(tokenizer, args.reward_model_path, remote)
        reward_model = load_model(model_args, tokenizer, kind="reward", role="reward", model_name_or_path=args.reward_model_path,
                                  trust_remote_code=remote, apply_lora=False).to(state.device).eval()

    written = {row.get("id") for row in log.rows}
    report["already_written"] = sum(prompt_id(p) in written for p in prompts)
    todo = [p for p in prompts if prompt_id(p) not in written]
    shard = todo[state.process_index:: state.num_processes]
    policy = policy_identity(model_args, model)
    sampling = {"temperature": args.temperature, "top_p": args.top_p, "max_new_tokens": args.max_new_tokens}
    set_seed(args.seed + 1000 * state.process_index + len(written))
    too_few: list[str] = []
    with tqdm(total=len(shard), desc=f"Sampling K={args.num_responses_per_prompt}", unit="prompt",
              disable=not state.is_local_main_process) as progress:
        for start in range(0, len(shard), args.batch_size):
            batch = shard[start: start + args.batch_size]
            answers = sample_distinct(model, tokenizer, batch, k=args.num_responses_per_prompt,
                                      max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                      top_p=args.top_p, max_attempts=args.max_attempts)
            for prompt, ids in zip(batch, answers):
                if len(ids) < args.num_responses_per_prompt:
                    too_few.append(prompt)
                    continue
                row = {"id": prompt_id(prompt), "prompt": prompt,
                       "responses": [tokenizer.decode(a, skip_special_tokens=True) for a in ids],
                       "rm_scores": score_answers(reward_model, tokenizer, prompt, ids) if reward_model else None,
                       "policy": policy, "sampling": sampling}
                with log.locked():
                    if not any(r.get("id") == row["id"] for r in log.rows):  # another process never writes it twice
                        log.append(row)
            progress.update(len(batch))
    report["too_few_distinct"] = len(too_few)
    if too_few:
        logger.warning("%d prompts got fewer than %d distinct answers in %d draws and were not written (raise "
                       "temperature or max_attempts): %s", len(too_few), args.num_responses_per_prompt,
                       args.max_attempts, [p[:60] for p in too_few[:3]])
    state.wait_for_everyone()
    if state.is_main_process:
        report["rows_in_file"] = len(AppendLog(args.output_file).rows)
        report["arguments"] = asdict(args)
        Path(args.output_file).with_suffix(".report.json").write_text(json.dumps(report, indent=2) + "\n")
        print(report_summary(report) + f"\n  {report['rows_in_file']} rows in {args.output_file}")
    return report
