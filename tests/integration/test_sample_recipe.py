"""recipes/sample.py: K distinct answers per prompt, RM scores, stable ids, resume after a kill, prompt hygiene."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import REPO, run_recipe

from rlhf_recipes.feedback.sampling import cap_per_user, dedupe_common_prefix, prompt_id

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_dedupe_ignores_the_shared_template_prefix_and_keeps_the_first():
    system = "<|system|>You are a helpful assistant who answers questions about films.<|user|>"
    prompts = [system + "Tell me about westerns", system + "Tell me about westerns please", system + "Name a comedy",
               system + "Tell me about westerns", system + "Name a drama"]
    kept, dropped = dedupe_common_prefix(prompts, min_chars=100)
    assert kept == [0, 2, 4] and dropped == {1: 0, 3: 0}  # the long shared system turn does not make all equal
    kept, dropped = dedupe_common_prefix(["abcdefgh1", "abcdefgh2", "xyz"], min_chars=8)
    assert kept == [0, 2] and dropped == {1: 0}


def test_cap_per_user_keeps_the_first_n():
    assert cap_per_user(["a", "b", "a", "a", "b", "c"], 2) == ([0, 1, 2, 4, 5], [3])


def sample(demo_dir: Path, output: Path, *extra: str) -> dict:
    return run_recipe("sample", ["--config", str(REPO / "recipes/demo/sample.yaml"),
                                 "--model_name_or_path", str(demo_dir / "base"), "--reward_model_path", "",
                                 "--dataset_name", str(demo_dir / "data/prompts"), "--output_file", str(output),
                                 "--max_new_tokens", "12", *extra])


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sample_writes_k_distinct_answers_and_resumes_after_a_damaged_row(demo_dir, tmp_path):
    output = tmp_path / "samples.jsonl"
    sample(demo_dir, output, "--max_prompts", "6", "--num_responses_per_prompt", "3")
    first = rows(output)
    assert len(first) == 6
    for row in first:
        assert row["id"] == prompt_id(row["prompt"])
        assert len(row["responses"]) == 3 and len(set(row["responses"])) == 3
        assert row["rm_scores"] is None and row["policy"]["name_or_path"] == str(demo_dir / "base")
    # killed while writing row 6: half a line is left
    text = output.read_text()
    last_start = text.rstrip("\n").rfind("\n") + 1
    output.write_text(text[: last_start + 40])
    report = sample(demo_dir, output, "--max_prompts", "9", "--num_responses_per_prompt", "3")
    after = rows(output)
    assert after[:5] == first[:5]  # untouched
    assert len(after) == 9 and len({r["id"] for r in after}) == 9
    assert report["already_written"] == 5
    assert Path(f"{output}.damaged").read_text().count(first[5]["id"]) == 1


def test_sample_scores_with_the_reward_model(demo_dir, reward_head_dir, tmp_path):
    """A reward model (here a fresh head on the base model, bias 0) scores each answer at its EOS."""
    import torch
    from trl import ModelConfig

    from rlhf_recipes.feedback.sampling import score_answers
    from rlhf_recipes.models import load_model, load_tokenizer

    output = tmp_path / "samples.jsonl"
    sample(demo_dir, output, "--max_prompts", "2", "--reward_model_path", str(reward_head_dir))
    assert all(len(r["rm_scores"]) == 4 and all(map(math.isfinite, r["rm_scores"])) for r in rows(output))
    tokenizer = load_tokenizer(str(demo_dir / "base"), padding_side="left")
    torch.manual_seed(0)
    rm = load_model(ModelConfig(model_name_or_path=str(reward_head_dir)), tokenizer, kind="reward").eval()
    row = rows(output)[0]
    answers = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in row["responses"]]
    batched = score_answers(rm, tokenizer, row["prompt"], answers)
    single = [score_answers(rm, tokenizer, row["prompt"], [a])[0] for a in answers]
    assert batched == pytest.approx(single, abs=1e-3)  # padding does not change a score
    assert len(set(batched)) == len(batched)
