"""recipes/sample.py: K distinct answers per prompt, RM scores, stable ids, resume after a kill, prompt hygiene."""

from __future__ import annotations

import json
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


def test_sample_scores_with_the_reward_model(demo_dir, tmp_path, monkeypatch):
    """Each written rm_score is the reward model's score of that very answer, recomputed here one unpadded sequence
    at a time with the model's own forward (a fresh seeded head on the base model, saved, bias 0)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import rlhf_recipes.feedback.sampling as sampling

    torch.manual_seed(0)
    rm_path = tmp_path / "rm"
    AutoModelForSequenceClassification.from_pretrained(demo_dir / "base", num_labels=1).save_pretrained(rm_path)
    AutoTokenizer.from_pretrained(demo_dir / "base").save_pretrained(rm_path)
    # The answers' token ids as sampled (their decoded text loses the EOS), to rescore exactly what was scored.
    drawn: dict[str, list[list[int]]] = {}
    sample_distinct = sampling.sample_distinct

    def recording(model, tokenizer, prompts, **kwargs):
        answers = sample_distinct(model, tokenizer, prompts, **kwargs)
        drawn.update({p: a for p, a in zip(prompts, answers)})
        return answers

    monkeypatch.setattr(sampling, "sample_distinct", recording)
    output = tmp_path / "samples.jsonl"
    sample(demo_dir, output, "--max_prompts", "2", "--reward_model_path", str(rm_path))

    rm = AutoModelForSequenceClassification.from_pretrained(rm_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(rm_path)
    written = rows(output)
    assert len(written) == 2
    for row in written:
        answers = drawn[row["prompt"]]
        assert [tokenizer.decode(a, skip_special_tokens=True) for a in answers] == row["responses"]
        prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            expected = [rm(input_ids=torch.tensor([prompt + a])).logits[0, 0].item() for a in answers]
        assert len(row["rm_scores"]) == 4 and len({round(e, 3) for e in expected}) == 4  # order matters
        assert row["rm_scores"] == pytest.approx(expected, abs=2e-4)
