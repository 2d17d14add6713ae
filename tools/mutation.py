"""Mutation testing of the core modules against their fast unit tests: `make mutation`.

    python tools/mutation.py                          # every target below
    python tools/mutation.py --only reward/losses     # one target (repeat --only for several)
    python tools/mutation.py --report                 # rewrite the results file from the last runs only
    python tools/mutation.py --survivors --only feedback/store   # after new tests: rerun that target's survivors

For each target, a scratch copy of the repository (runs/mutation/<target>/: src, tests, recipes, pyproject.toml with
a [tool.mutmut] section) runs `mutmut run` with only that file mutated and only its unit tests selected, so one
target costs its own tests times its mutants and nothing else. mutmut runs each mutant only against the tests that
reach the mutated function, and counts a test run past its time limit as a kill ("timeout").

The score of every target run so far is kept in benchmarks/results/mutation.json and written, with each surviving
mutant's diff, to benchmarks/results/mutation.md. A survivor is either killed by a new test, explained in
EXPLAINED below (an equivalent mutant, or a change the tests deliberately do not pin), or a change of a message's
wording only (WORDING_RULE, `message_wording`); the report marks any other survivor "unexplained".
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import tokenize
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SCRATCH = REPO / "runs" / "mutation"

# target -> (the file mutated, the fast unit tests it is checked against)
TARGETS: dict[str, tuple[str, list[str]]] = {
    "ppo/core": ("src/rlhf_recipes/ppo/core.py", ["tests/unit/test_ppo_core.py"]),
    "reward/losses": ("src/rlhf_recipes/reward/losses.py", ["tests/unit/test_reward_losses.py"]),
    "feedback/store": ("src/rlhf_recipes/feedback/store.py", ["tests/unit/test_label_store.py"]),
    "checkpoints": ("src/rlhf_recipes/checkpoints.py",
                    ["tests/unit/test_reliability.py", "tests/unit/test_checkpoint_writer.py"]),
    "data/reading": ("src/rlhf_recipes/data/reading.py",
                     ["tests/unit/test_data.py", "tests/unit/test_data_reading.py"]),
}

# Tests left out of a target's mutation run: each mutant reruns the tests that reach the mutated function, and these
# rebuild the demo or start Python processes for seconds per mutant while checking another module's behaviour. They
# still run in `make test`. target -> {pytest node id (prefix): why}
DESELECTED: dict[str, dict[str, str]] = {
    "feedback/store": {
        "tests/unit/test_label_store.py::test_store_rankings_join_the_demo_reward_split_and_load_as_rankings":
            "builds a demo (11 s) to check demo.build's join of stored rankings, not the store",
        "tests/unit/test_label_store.py::test_adding_rankings_refuses_a_missing_file_or_a_bad_row_by_its_line":
            "runs demo.build --add_rankings in subprocesses (5 s) to check its error messages",
    },
    "checkpoints": {
        "tests/unit/test_reliability.py::test_each_stage_refuses_lengths_beyond_the_context":
            "builds the demo (18 s) to check the context-length refusal of models.py",
        "tests/unit/test_reliability.py::test_a_console_run_prints_no_traceback_for_a_user_error":
            "starts Python (7 s) to check config.run_main's exit",
    },
}

# mutmut's name of a surviving mutant -> why no test kills it (equivalent, or deliberately not pinned).
EXPLAINED: dict[str, str] = {
    "rlhf_recipes.reward.losses.x_ranking_differences__mutmut_10":
        "equivalent: `rewards` is [B, K] (every caller, and the docstring), so shape[1] is shape[-1].",
    "rlhf_recipes.reward.losses.x_ranking_differences__mutmut_17":
        "equivalent on CPU, where the unit tests run: the triangle is made on the default device. On a GPU the "
        "CPU triangle & the CUDA mask raises at the first reward step (the GPU runs of the reward stage).",
    "rlhf_recipes.reward.losses.x_ranking_differences__mutmut_21": "as mutmut_17 (device argument left out).",
    "rlhf_recipes.reward.losses.x_group_rewards__mutmut_20":
        "as x_ranking_differences__mutmut_17: the mask on the default device is the same tensor on CPU; on a GPU the "
        "first `&` with the CUDA triangle raises.",
    "rlhf_recipes.reward.losses.x_group_rewards__mutmut_24": "as x_group_rewards__mutmut_20 (device argument left out).",
    # ppo/core: the chunked log-softmax. The chunk size only bounds memory; the tests pin it (rows per chunk, each
    # position once) with a dispatch-mode recorder, so what survives here never changes a chunk.
    "rlhf_recipes.ppo.core.x__chunks__mutmut_12":
        "equivalent: max(2, vocab) differs from max(1, vocab) only for a one-token vocabulary, where it halves the "
        "chunk (same numbers).",
    "rlhf_recipes.ppo.core.x__chunks__mutmut_19":
        "equivalent: callers read only the range's .step, never its start.",
    "rlhf_recipes.ppo.core.xǁ_ChunkedLogProbsǁforward__mutmut_16":
        "equivalent: _chunks' first argument sets only the range's stop, which no caller reads (only .step).",
    "rlhf_recipes.ppo.core.xǁ_ChunkedLogProbsǁbackward__mutmut_10":
        "as forward__mutmut_16 (the unread stop of _chunks' range).",
    "rlhf_recipes.ppo.core.x_entropy_from_logits__mutmut_22":
        "as _ChunkedLogProbs.forward__mutmut_16 (the unread stop of _chunks' range).",
    "rlhf_recipes.ppo.core.xǁ_ChunkedLogProbsǁforward__mutmut_17":
        "equivalent: the Function's logits are always 2-D [N, V] (logprobs_from_logits flattens them), so shape[+1] "
        "is shape[-1].",
    "rlhf_recipes.ppo.core.xǁ_ChunkedLogProbsǁbackward__mutmut_11":
        "as forward__mutmut_17 (2-D logits: shape[+1] is shape[-1]).",
    "rlhf_recipes.ppo.core.xǁ_ChunkedLogProbsǁforward__mutmut_40":
        "equivalent: each chunk z is 2-D [rows, V], so dim=+1 is dim=-1.",
    "rlhf_recipes.ppo.core.xǁ_ChunkedLogProbsǁforward__mutmut_49":
        "as forward__mutmut_40 (2-D chunk: dim=+1 is dim=-1).",
    "rlhf_recipes.ppo.core.xǁ_ChunkedLogProbsǁforward__mutmut_51":
        "as forward__mutmut_40 (the gathered chunk is 2-D [rows, 1]: squeeze(+1) is squeeze(-1)).",
    "rlhf_recipes.ppo.core.xǁ_ChunkedLogProbsǁbackward__mutmut_42":
        "as forward__mutmut_40 (2-D chunk: scatter along dim +1 is along dim -1).",
    "rlhf_recipes.ppo.core.x_entropy_from_logits__mutmut_42":
        "as _ChunkedLogProbs.forward__mutmut_40 (2-D chunk: dim=+1 is dim=-1).",
    "rlhf_recipes.ppo.core.x_entropy_from_logits__mutmut_50":
        "as _ChunkedLogProbs.forward__mutmut_40 (2-D chunk: dim=+1 is dim=-1).",
    "rlhf_recipes.ppo.core.x_entropy_from_logits__mutmut_52":
        "as _ChunkedLogProbs.forward__mutmut_40 (2-D chunk: dim=+1 is dim=-1).",
    "rlhf_recipes.ppo.core.xǁ_ChunkedLogProbsǁbackward__mutmut_45":
        "equivalent: chunk.to(None) returns the chunk, and assigning it into grad_logits casts it to the logits' "
        "dtype just as .to(logits.dtype) does (the bf16 gradient test checks the dtype).",
    # ppo/core: per-token [B, T] tensors are 2-D by contract (module docstring), so dim 1 is the last dim.
    "rlhf_recipes.ppo.core.x_per_token_rewards__mutmut_14":
        "equivalent: mask is [B, T] by contract, so sum(dim=+1) is sum(dim=-1).",
    "rlhf_recipes.ppo.core.x_compute_gae__mutmut_22":
        "equivalent: rewards is [B, T] by contract, so size(+1) is size(-1).",
    "rlhf_recipes.ppo.core.x_truncate_after_stop_token__mutmut_17":
        "equivalent: responses is [B, T] by contract, so size(+1) is size(-1).",
    "rlhf_recipes.ppo.core.x_truncate_after_stop_token__mutmut_5":
        "equivalent: first_true_indices of [B, T] is 1-D [B], so unsqueeze(+1) is unsqueeze(-1).",
    "rlhf_recipes.ppo.core.x_truncate_after_stop_token__mutmut_10":
        "equivalent: positions [T] broadcast against stop_idx [B, 1] to the same [B, T] comparison as [1, T].",
    # ppo/core: the rest compute the same numbers by another route.
    "rlhf_recipes.ppo.core.x_masked_mean__mutmut_11":
        "equivalent: Tensor.sum(None) sums every element, as sum() does.",
    "rlhf_recipes.ppo.core.x_masked_mean__mutmut_16":
        "equivalent: Tensor.sum(None) sums every element, as sum() does.",
    "rlhf_recipes.ppo.core.x_compute_gae__mutmut_19":
        "equivalent: multiplying by the bool mask gives the same numbers and dtype as by its 0/1 float copy.",
    "rlhf_recipes.ppo.core.x_per_token_rewards__mutmut_23":
        "equivalent: a CPU index tensor is accepted for a tensor on any device (torch copies it over; the mutant "
        "passes test_results_stay_on_the_input_device on the meta device), so the batch index's device "
        "does not matter.",
    "rlhf_recipes.ppo.core.x_per_token_rewards__mutmut_25":
        "as per_token_rewards__mutmut_23 (device argument left out).",
    "rlhf_recipes.ppo.core.x_per_token_rewards__mutmut_37":
        "not pinned: the score is added into the kl-dtype rewards either way; it differs only when scores are wider "
        "than kl (e.g. float64 scores, float32 kl), by one rounding of that addition. In the trainer kl is float32 "
        "(logprobs_from_logits) and scores are float32 or bf16, where both are exact.",
    "rlhf_recipes.ppo.core.x_per_token_rewards__mutmut_39":
        "equivalent: torch.where promotes the zeros to the scores' dtype, and 0 is exact in every dtype.",
    "rlhf_recipes.ppo.core.x_per_token_rewards__mutmut_41":
        "as per_token_rewards__mutmut_39 (dtype argument left out).",
    "rlhf_recipes.ppo.core.x_policy_loss__mutmut_47":
        "equivalent in value: masked_mean of the bool tensor is the same fraction (integer sum over integer count); "
        "only the dtype of this logged statistic becomes float32 when logprobs are not float32.",
    "rlhf_recipes.ppo.core.x_value_loss__mutmut_35":
        "as policy_loss__mutmut_47 (the logged clip fraction of a bool tensor).",

    # feedback/store: the label store.
    "rlhf_recipes.feedback.store.x__unit_hash__mutmut_9":
        "equivalent on Python 3.11+, where int.from_bytes' byteorder defaults to \"big\" (on 3.10, which "
        "requires it, every overlap check raises TypeError).",
    "rlhf_recipes.feedback.store.x_check_name__mutmut_27":
        "equivalent: a Unicode category's first letter is never X, so `in \"XXCZXX\"` holds for the same "
        "characters as `in \"CZ\"`.",
    "rlhf_recipes.feedback.store.x_read_order__mutmut_7":
        "equivalent: splitting every token into characters changes only tokens that are refused either way (a "
        "word becomes letters, each refused with the same message quoting the input), and \"=\" stays \"=\".",
    "rlhf_recipes.feedback.store.x_read_order__mutmut_67":
        "equivalent: `tied_to_previous` is only tested for truth, and None is false like False.",
    "rlhf_recipes.feedback.store.x_read_order__mutmut_88":
        "as read_order__mutmut_67 (None for False in a flag only tested for truth).",
    "rlhf_recipes.feedback.store.x_parse_ranking__mutmut_7":
        "equivalent: read_order tests one_based only for truth, and None is false like False.",
    "rlhf_recipes.feedback.store.x_parse_flags__mutmut_6":
        "equivalent: \"{}\" no longer short-cuts to {}, but json.loads(\"{}\") is an empty dict, which gives "
        "{} below.",
    "rlhf_recipes.feedback.store.xǁLabelStoreǁwanted__mutmut_3":
        "equivalent: a gold item's quota is \"everyone\"; 11**9 is as far beyond any number of labelers as "
        "10**9 (10*9 = 90 is killed by test_gold_items_go_to_every_labeler).",
    "rlhf_recipes.feedback.store.xǁLabelStoreǁwanted__mutmut_4":
        "as wanted__mutmut_3 (10**10 for 10**9: both mean everyone).",
    "rlhf_recipes.feedback.store.xǁLabelStoreǁis_overlap__mutmut_12":
        "equivalent but for a 2**-64 chance: `<=` differs from `<` only when the 64-bit hash equals "
        "overlap_fraction exactly.",
    "rlhf_recipes.feedback.store.xǁLabelStoreǁ_count_new__mutmut_2":
        "equivalent: the names in `_ranked_by` are read only by len() and by `_check_room`'s `labeler in "
        "ranked`, which `_done_by` (filled from the same rows) already covers.",
    "rlhf_recipes.feedback.store.xǁLabelStoreǁ_count_new__mutmut_10":
        "as _count_new__mutmut_2 (the labeler names in `_ranked_by` are not read).",
    "rlhf_recipes.feedback.store.xǁLabelStoreǁ_count_new__mutmut_11":
        "as _count_new__mutmut_2 (the labeler names in `_ranked_by` are not read).",
    "rlhf_recipes.feedback.store.xǁLabelStoreǁ_count_new__mutmut_12":
        "as _count_new__mutmut_2 (the labeler names in `_ranked_by` are not read).",
    "rlhf_recipes.feedback.store.xǁLabelStoreǁ_close__mutmut_8":
        "equivalent: the loop above already popped every open serve of this labeler on this item, `serve` "
        "included; popping None is a no-op like popping its gone token.",
    "rlhf_recipes.feedback.store.xǁLabelStoreǁnext_item__mutmut_36":
        "not pinned: the token's length; 32 random bytes (43 characters) are as unguessable as 16 and within "
        "the 64 characters `_claim` accepts.",
    "rlhf_recipes.feedback.store.xǁLabelStoreǁnext_item__mutmut_37":
        "as next_item__mutmut_36 (17 random bytes for 16).",

    # data/reading: dataset files and row checks.
    "rlhf_recipes.data.reading.x__load_raw_dataset__mutmut_58":
        "equivalent: an unset variable read as None instead of '' is in neither case one of ('1', 'true').",
    "rlhf_recipes.data.reading.x__load_raw_dataset__mutmut_60":
        "as _load_raw_dataset__mutmut_58 (os.environ.get's default left out: None).",
    "rlhf_recipes.data.reading.x__load_raw_dataset__mutmut_61":
        "as _load_raw_dataset__mutmut_58 (an unset variable read as 'XXXX', which is not '1' or 'true' either).",
    "rlhf_recipes.data.reading.x__read_local_file__mutmut_28":
        "not pinned: read_text without an encoding uses the locale's, which is UTF-8 where the tests run (and under "
        "Python's UTF-8 mode); it differs only on a non-UTF-8 locale such as Windows' cp1252, which no in-process "
        "test can switch to.",
    "rlhf_recipes.data.reading.x__read_local_file__mutmut_30":
        "equivalent: codec names are case-insensitive, 'UTF-8' is 'utf-8'.",
    "rlhf_recipes.data.reading.x_read_jsonl__mutmut_19":
        "equivalent: codec names are case-insensitive, 'UTF-8' is 'utf-8'.",
    "rlhf_recipes.data.reading.x__rows_to_dataset__mutmut_1":
        "equivalent: the default unit is never used, every caller (_read_local_file) passes 'line' or 'item'.",
    "rlhf_recipes.data.reading.x__rows_to_dataset__mutmut_2": "as _rows_to_dataset__mutmut_1 (unused default unit).",
    "rlhf_recipes.data.reading.x_check_row_types__mutmut_7":
        "equivalent: a column missing from the row is read as None by row.get, and column_type_problem returns None "
        "for None, as the skipped check does.",
    # checkpoints
    "rlhf_recipes.checkpoints.x__sha256__mutmut_13":
        "equivalent: the block size only changes how the file is read, not its sha256 (read(None) reads it whole).",
    "rlhf_recipes.checkpoints.x__sha256__mutmut_15": "as _sha256__mutmut_13 (block size).",
    "rlhf_recipes.checkpoints.x__sha256__mutmut_16": "as _sha256__mutmut_13 (block size).",
    "rlhf_recipes.checkpoints.x_write_manifest__mutmut_31":
        "equivalent: the indent is layout only; the manifest is read back with json.loads.",
    "rlhf_recipes.checkpoints.x_write_manifest__mutmut_34": "as write_manifest__mutmut_31 (indent).",
    "rlhf_recipes.checkpoints.x_write_manifest__mutmut_40": "as write_manifest__mutmut_31 (indent).",
    "rlhf_recipes.checkpoints.x_verify_checkpoint__mutmut_7":
        "equivalent: latest_checkpoint of a folder that does not exist is None (sorted_checkpoints returns []).",
    "rlhf_recipes.checkpoints.x__replace_folder__mutmut_26":
        "not pinned: removing the set-aside old folder only fails on a filesystem that refuses it, which the tests "
        "(run as root, where permissions do not stop a delete) cannot make in-process.",
    "rlhf_recipes.checkpoints.x__replace_folder__mutmut_28": "as _replace_folder__mutmut_26 (ignore_errors).",
    "rlhf_recipes.checkpoints.x__replace_folder__mutmut_29": "as _replace_folder__mutmut_26 (ignore_errors).",
    "rlhf_recipes.checkpoints.x__rotate__mutmut_5":
        "not pinned: as _replace_folder__mutmut_26, a rotated-out checkpoint that cannot be deleted needs a "
        "filesystem that refuses it.",
    "rlhf_recipes.checkpoints.x__rotate__mutmut_7": "as _rotate__mutmut_5 (ignore_errors).",
    "rlhf_recipes.checkpoints.x__rotate__mutmut_8": "as _rotate__mutmut_5 (ignore_errors).",
    "rlhf_recipes.checkpoints.x__any_rank__mutmut_4":
        "not pinned here: the all-reduce branch runs only with 2+ initialized ranks, which takes a multi-process "
        "run (seconds per mutant), not a unit test; one process takes the flag as it is.",
    "rlhf_recipes.checkpoints.x__any_rank__mutmut_5": "as _any_rank__mutmut_4 (2+ ranks only).",
    "rlhf_recipes.checkpoints.x__any_rank__mutmut_6": "as _any_rank__mutmut_4 (2+ ranks only).",
    "rlhf_recipes.checkpoints.x__any_rank__mutmut_7": "as _any_rank__mutmut_4 (2+ ranks only).",
    "rlhf_recipes.checkpoints.x__any_rank__mutmut_8": "as _any_rank__mutmut_4 (2+ ranks only).",
    "rlhf_recipes.checkpoints.x__any_rank__mutmut_9": "as _any_rank__mutmut_4 (2+ ranks only).",
    "rlhf_recipes.checkpoints.x__any_rank__mutmut_10": "as _any_rank__mutmut_4 (2+ ranks only).",
    "rlhf_recipes.checkpoints.x__any_rank__mutmut_11": "as _any_rank__mutmut_4 (2+ ranks only).",
    "rlhf_recipes.checkpoints.x__any_rank__mutmut_12": "as _any_rank__mutmut_4 (2+ ranks only).",
    "rlhf_recipes.checkpoints.x__any_rank__mutmut_13": "as _any_rank__mutmut_4 (2+ ranks only).",
    "rlhf_recipes.checkpoints.x__any_rank__mutmut_14": "as _any_rank__mutmut_4 (2+ ranks only).",
    "rlhf_recipes.checkpoints.x__any_rank__mutmut_15": "as _any_rank__mutmut_4 (2+ ranks only).",
    "rlhf_recipes.checkpoints.x__any_rank__mutmut_16": "as _any_rank__mutmut_4 (2+ ranks only).",
    "rlhf_recipes.checkpoints.x__any_rank__mutmut_17": "as _any_rank__mutmut_4 (2+ ranks only).",
    "rlhf_recipes.checkpoints.x__any_rank__mutmut_18": "as _any_rank__mutmut_4 (2+ ranks only).",
    "rlhf_recipes.checkpoints.xǁAtomicCheckpointMixinǁ_get_output_dir__mutmut_2":
        "equivalent outside hyperparameter search: trial is None in every stage (no Trainer.hyperparameter_search).",
    "rlhf_recipes.checkpoints.xǁAtomicCheckpointMixinǁ_save_checkpoint__mutmut_2": "as _get_output_dir__mutmut_2 (trial is always None).",
    "rlhf_recipes.checkpoints.xǁAtomicCheckpointMixinǁ_save_checkpoint__mutmut_16": "as _get_output_dir__mutmut_2 (trial is always None).",
    "rlhf_recipes.checkpoints.xǁAtomicCheckpointMixinǁ_save_checkpoint__mutmut_15":
        "equivalent: Trainer._save_checkpoint (transformers 5.25) never reads its model argument, it saves self.model.",
    "rlhf_recipes.checkpoints.xǁAtomicCheckpointMixinǁ_save_checkpoint__mutmut_40": "as _any_rank__mutmut_4: the device is only used by the all-reduce of 2+ ranks.",
    "rlhf_recipes.checkpoints.xǁAtomicCheckpointMixinǁ_save_checkpoint__mutmut_45": "as _rotate__mutmut_5 (ignore_errors on a delete that only a refusing filesystem fails).",
    "rlhf_recipes.checkpoints.xǁAtomicCheckpointMixinǁ_save_checkpoint__mutmut_47": "as _rotate__mutmut_5 (ignore_errors).",
    "rlhf_recipes.checkpoints.xǁAtomicCheckpointMixinǁ_save_checkpoint__mutmut_48": "as _rotate__mutmut_5 (ignore_errors).",
    "rlhf_recipes.checkpoints.xǁAtomicCheckpointMixinǁ_save_checkpoint__mutmut_77": "as _rotate__mutmut_5 (ignore_errors).",
    "rlhf_recipes.checkpoints.xǁAtomicCheckpointMixinǁ_save_checkpoint__mutmut_79": "as _rotate__mutmut_5 (ignore_errors).",
    "rlhf_recipes.checkpoints.xǁAtomicCheckpointMixinǁ_save_checkpoint__mutmut_80": "as _rotate__mutmut_5 (ignore_errors).",
    "rlhf_recipes.checkpoints.xǁAtomicCheckpointMixinǁ_save_checkpoint__mutmut_66": "as _any_rank__mutmut_4: the message for a failure on another rank needs 2+ ranks.",
    "rlhf_recipes.checkpoints.xǁAtomicCheckpointMixinǁ_save_checkpoint__mutmut_68": "as _save_checkpoint__mutmut_66 (another rank's failure).",
    "rlhf_recipes.checkpoints.xǁAtomicCheckpointMixinǁ_save_checkpoint__mutmut_69": "as _save_checkpoint__mutmut_66 (another rank's failure).",
}

WORDING_RULE = ("tests pin what a message names (the file, row, field, the input refused, the fix), not every word: "
                "a survivor whose diff changes nothing but the text of string literals inside the message of a "
                "`raise` (no expression in an f-string, no other token) is listed here, by this rule, not one by one.")


def _tokens(line: str) -> list[tokenize.TokenInfo]:
    """The tokens of one source line (a line inside a bracket ends early: what it has is enough)."""
    found: list[tokenize.TokenInfo] = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(line.strip()).readline):
            if tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.ENDMARKER, tokenize.INDENT, tokenize.DEDENT):
                found.append(tok)
    except (tokenize.TokenError, IndentationError):
        pass
    return found


def _same_but_text(old: str, new: str) -> bool:
    """Two string literals that differ only in their text: the same expressions in the same f-string places."""
    try:
        a, b = ast.parse(old, mode="eval").body, ast.parse(new, mode="eval").body
    except SyntaxError:
        return False
    if isinstance(a, ast.Constant) and isinstance(b, ast.Constant):
        return isinstance(a.value, str) and isinstance(b.value, str)
    if isinstance(a, ast.JoinedStr) and isinstance(b, ast.JoinedStr):
        fields = [[ast.dump(v) for v in s.values if isinstance(v, ast.FormattedValue)] for s in (a, b)]
        return fields[0] == fields[1]
    return False


def _message_lines(source: Path) -> dict[str, bool]:
    """Each stripped line of `source` -> True when every occurrence of it lies inside the message of a `raise`."""
    try:
        text = source.read_text()
        tree = ast.parse(text)
    except (OSError, SyntaxError):
        return {}
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            for arg in [*node.exc.args, *(k.value for k in node.exc.keywords)]:
                inside.update(range(arg.lineno, arg.end_lineno + 1))
    where: dict[str, bool] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        key = line.strip()
        where[key] = where.get(key, True) and number in inside
    return where


def message_wording(diff: list[str], source: Path) -> bool:
    """True when a mutant's diff (`_diff_lines`) changes only the words of string literals in a raised message."""
    old = [line[1:] for line in diff if line.startswith("-")]
    new = [line[1:] for line in diff if line.startswith("+")]
    if not old or len(old) != len(new):
        return False
    where = _message_lines(source)
    changed = False
    for before, after in zip(old, new):
        if not where.get(before.strip(), False):
            return False  # not (only) part of a raised message in the source as it is now
        a, b = _tokens(before), _tokens(after)
        if len(a) != len(b):
            return False
        for x, y in zip(a, b):
            if (x.type, x.string) == (y.type, y.string):
                continue
            if not (x.type == y.type == tokenize.STRING and _same_but_text(x.string, y.string)):
                return False
            changed = True
    return changed


def verdict(survivor: dict, source: str) -> str:
    """Why a survivor is not killed: its EXPLAINED entry, "message wording", or "**unexplained**"."""
    if survivor["name"] in EXPLAINED:
        return EXPLAINED[survivor["name"]]
    if survivor["status"] == "survived" and message_wording(survivor["diff"], REPO / source):
        return "message wording"
    return "**unexplained**"


STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout",
          -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", None: "not checked"}


def _mutmut_section(source: str, tests: list[str], deselect: list[str]) -> str:
    quoted = ", ".join(json.dumps(t) for t in tests)
    pytest_args = ", ".join(json.dumps(a) for a in ["-p", "no:cacheprovider", "-q",
                                                      *[f"--deselect={d}" for d in deselect]])
    return ("\n[tool.mutmut]\n"
            'source_paths = ["src"]\n'
            f"only_mutate = [{json.dumps(source)}]\n"
            f"pytest_add_cli_args_test_selection = [{quoted}]\n"
            f"pytest_add_cli_args = [{pytest_args}]\n"
            'also_copy = ["recipes"]\n'
            # mutmut's CPU-time limit per mutant is (test time + this) x 30 (wall: x 15). Mutants fork from a server
            # that has imported the tests already, so a few seconds is room enough for a slow one; a mutant that
            # loops for ever (e.g. a file read that never reaches EOF) then costs minutes, not a quarter of an hour
            "timeout_constant = 5\n"
            # torch is not fork-safe after its thread pools start: fork every mutant from a clean server process
            'process_isolation = "forkserver"\n')


def prepare(target: str) -> Path:
    """A fresh scratch copy of what the target's tests need, with mutmut configured for that target only."""
    source, tests = TARGETS[target]
    work = SCRATCH / target.replace("/", "-")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for folder in ("src", "tests", "recipes"):
        shutil.copytree(REPO / folder, work / folder, ignore=ignore)
    (work / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text() + _mutmut_section(source, tests, list(DESELECTED.get(target, {}))))
    return work


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the mutated copy, never the checkout
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    return env


def run_target(target: str, max_children: int) -> dict:
    work = prepare(target)
    start = time.time()
    run = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children)], cwd=work,
                         env=_env(), capture_output=True, text=True)
    (work / "mutmut-run.log").write_text(run.stdout + run.stderr)
    if not (work / "mutants" / f"{TARGETS[target][0]}.meta").is_file():
        raise SystemExit(f"mutmut wrote no results for {target} (exit {run.returncode}); see {work}/mutmut-run.log:\n"
                         + (run.stdout + run.stderr)[-3000:])
    return collect(target, time.time() - start, max_children)


def rerun_survivors(target: str, previous: dict, max_children: int) -> dict:
    """Run again only the mutants `previous` lists as survived or without tests (after new tests): tests are only
    added, so a mutant killed before stays killed, and the score is the old one with these verdicts replaced."""
    names = [s["name"] for s in previous["survivors"]]
    work = prepare(target)
    start = time.time()
    run = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children), *names],
                         cwd=work, env=_env(), capture_output=True, text=True)
    (work / "mutmut-run.log").write_text(run.stdout + run.stderr)
    meta = work / "mutants" / f"{TARGETS[target][0]}.meta"
    if not meta.is_file():
        raise SystemExit(f"mutmut wrote no results for {target} (exit {run.returncode}); see {work}/mutmut-run.log")
    fresh = collect(target, None, max_children)
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    counts = dict(previous["counts"])
    for survivor in previous["survivors"]:
        counts[survivor["status"]] -= 1
    for name in names:
        status = STATUS.get(codes.get(name), "suspicious")
        counts[status] = counts.get(status, 0) + 1
    fresh.update(counts={k: v for k, v in counts.items() if v}, wall_s=previous["wall_s"],
                 survivors=[s for s in fresh["survivors"] if s["name"] in set(names)],
                 rerun=f"{len(names)} earlier survivors rerun in {round(time.time() - start)} s")
    return fresh


def collect(target: str, wall: float | None, max_children: int | None = None) -> dict:
    """The verdicts mutmut recorded for `target` so far (a run stopped early leaves mutants "not checked")."""
    source, tests = TARGETS[target]
    work = SCRATCH / target.replace("/", "-")
    meta = work / "mutants" / f"{source}.meta"
    if not meta.is_file():
        raise SystemExit(f"No mutmut results for {target} in {work}: run `python tools/mutation.py --only {target}`.")
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    counts: dict[str, int] = {}
    survivors = []
    for name, code in sorted(codes.items()):
        status = STATUS.get(code, "suspicious")
        counts[status] = counts.get(status, 0) + 1
        if status in ("survived", "no tests", "suspicious"):
            survivors.append({"name": name, "status": status})
    diffs = _diffs(work, source, [s["name"] for s in survivors])
    for survivor in survivors:
        survivor["diff"] = _diff_lines(diffs[survivor["name"]])
    return {"target": target, "source": source, "tests": tests, "total": len(codes), "counts": counts,
            "survivors": survivors, "wall_s": None if wall is None else round(wall),
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "max_children": max_children}


# What `mutmut show NAME` prints, for many mutants in one process (a `mutmut show` each costs seconds of start-up)
_DIFFS = """
import json, sys
from mutmut.mutation.diff_apply import get_diff_for_mutant
names, path = json.load(sys.stdin)
json.dump({name: get_diff_for_mutant(name, path=path) for name in names}, sys.stdout)
"""


def _diffs(work: Path, source: str, names: list[str]) -> dict[str, str]:
    if not names:
        return {}
    run = subprocess.run([sys.executable, "-c", _DIFFS], cwd=work, env=_env(), input=json.dumps([names, source]),
                         capture_output=True, text=True)
    if run.returncode == 0:
        return json.loads(run.stdout)
    # another mutmut version's internals: one `mutmut show` per mutant
    return {name: subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=work, env=_env(),
                                 capture_output=True, text=True).stdout for name in names}


def _diff_lines(diff: str) -> list[str]:
    """The changed lines of `mutmut show`'s diff (without the file header)."""
    return [line for line in diff.splitlines()
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} logical cores"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_report(results: dict[str, dict]) -> Path:
    lines = ["# Mutation score of the core modules",
             "",
             "Written by `make mutation` (`python tools/mutation.py`): mutmut mutates one file at a time and runs only "
             "that file's fast unit tests against each mutant. The score counts *timeout* (a mutant whose tests ran "
             "past mutmut's time limit, e.g. an endless loop) as killed, over the mutants checked; *not checked* are "
             "those a run stopped early never reached. Every survivor below is explained, listed under *message "
             "wording* by the rule stated there, or marked **unexplained**.",
             "",
             f"CPU: {_cpu()}.",
             "",
             "| file | tests | killed | timeout | survived | no tests | not checked | total | score | wall |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for target in TARGETS:
        r = results.get(target)
        if r is None:
            lines.append(f"| {TARGETS[target][0]} | {', '.join(TARGETS[target][1])} | not run | | | | | | | |")
            continue
        c = r["counts"]
        killed, timeout = c.get("killed", 0), c.get("timeout", 0)
        tested = r["total"] - c.get("no tests", 0) - c.get("skipped", 0) - c.get("not checked", 0)
        score = f"{100 * (killed + timeout) / tested:.1f}%" if tested else "-"
        wall = "stopped early" if r["wall_s"] is None else f"{r['wall_s']} s"
        if r.get("rerun"):
            wall += f", then {r['rerun']}"
        lines.append(f"| {r['source']} | {', '.join(r['tests'])} | {killed} | {timeout} | {c.get('survived', 0)} | "
                     f"{c.get('no tests', 0)} | {c.get('not checked', 0)} | {r['total']} | {score} | "
                     f"{wall} ({r['when']}) |")
    lines += ["", "Tests left out of a target's run (they still run in `make test`):", ""]
    lines += [f"- {target}: `{test}`: {why}" for target, tests in DESELECTED.items() for test, why in tests.items()]
    for target in TARGETS:
        r = results.get(target)
        if not r or not r["survivors"]:
            continue
        verdicts = [(s, verdict(s, r["source"])) for s in r["survivors"]]
        lines += ["", f"## Survivors in {r['source']}", ""]
        for s, why in verdicts:
            if why != "message wording":
                lines += [f"- `{s['name']}` ({s['status']}): {why}", "", "  ```diff",
                          *[f"  {line}" for line in s["diff"]], "  ```"]
        wording = [s for s, why in verdicts if why == "message wording"]
        if wording:
            lines += ["", f"### Message wording in {r['source']} ({len(wording)})", "", f"By rule: {WORDING_RULE}", ""]
            for s in wording:
                lines += [f"- `{s['name']}`", "", "  ```diff", *[f"  {line}" for line in s["diff"]], "  ```"]
    path = RESULTS / "mutation.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=sorted(TARGETS), help="run this target only (repeatable)")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 1, help="mutants tested in parallel")
    parser.add_argument("--report", action="store_true", help="rewrite the report from the stored results only")
    parser.add_argument("--survivors", action="store_true", help="rerun only the --only targets' stored survivors "
                        "and mutants without tests (after new tests) and update their score")
    parser.add_argument("--collect", action="store_true", help="record the --only targets' verdicts so far from "
                        "their scratch folders (after a run was stopped early) without running mutmut")
    args = parser.parse_args(argv)
    store = RESULTS / "mutation.json"
    results = json.loads(store.read_text()) if store.is_file() else {}
    if args.collect:
        for target in args.only or []:
            previous = results.get(target, {})
            results[target] = collect(target, None)
            if not results[target]["counts"].get("not checked") and previous.get("wall_s"):
                # a finished run, some mutants rerun since (e.g. after a new test): keep the run's own time
                results[target]["wall_s"] = previous["wall_s"]
        store.write_text(json.dumps(results, indent=1) + "\n")
    elif args.survivors:
        for target in args.only or []:
            if target not in results:
                raise SystemExit(f"No stored results for {target}: run `python tools/mutation.py --only {target}`.")
            print(f"rerunning {len(results[target]['survivors'])} survivors of {target} ...", flush=True)
            results[target] = rerun_survivors(target, results[target], args.max_children)
            print(f"  {results[target]['counts']}; {results[target]['rerun']}", flush=True)
            store.write_text(json.dumps(results, indent=1) + "\n")
    elif not args.report:
        for target in args.only or list(TARGETS):
            print(f"mutating {TARGETS[target][0]} against {', '.join(TARGETS[target][1])} ...", flush=True)
            results[target] = run_target(target, args.max_children)
            c = results[target]["counts"]
            print(f"  {c} of {results[target]['total']} in {results[target]['wall_s']} s", flush=True)
            store.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {write_report(results)}")
    unexplained = [s["name"] for r in results.values() for s in r["survivors"]
                   if verdict(s, r["source"]) == "**unexplained**"]
    if unexplained:
        print(f"{len(unexplained)} surviving mutants are neither killed nor explained: {unexplained}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
