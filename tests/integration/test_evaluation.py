"""Evaluation (issue 6): `evaluate_policies` and `write_report` on the demo, and `recipes/evaluate.py` end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_recipe
from trl import ModelConfig

from rlhf_recipes.evaluation import (
    COLUMNS,
    JUDGE_COLUMNS,
    EvalArguments,
    evaluate_policies,
    sample_responses,
    write_report,
)
from rlhf_recipes.models import load_model, load_tokenizer

N_PROMPTS = 12


def held_out_prompts(demo_dir: Path, n: int = N_PROMPTS) -> list[str]:
    lines = (demo_dir / "data/prompts/test.jsonl").read_text().splitlines()
    return [json.loads(line)["prompt"] for line in lines[:n]]


def load(path: Path, tokenizer, kind: str = "causal_lm"):
    torch.manual_seed(0)  # a reward head loaded from a causal LM is new: make it reproducible
    return load_model(ModelConfig(model_name_or_path=str(path), dtype="float32"), tokenizer, kind=kind).eval()


@pytest.fixture(scope="module")
def twin_evaluation(demo_dir, sft_dir):
    """The same SFT policy loaded twice, judged by a reward model, with the first copy as the KL reference."""
    tokenizer = load_tokenizer(str(sft_dir), padding_side="left")
    first, second = load(sft_dir, tokenizer), load(sft_dir, tokenizer)
    reward_model = load(sft_dir, tokenizer, kind="reward")
    # 12 tokens: short enough that some responses hit the limit, long enough that some finish with EOS.
    args = EvalArguments(num_prompts=N_PROMPTS, response_length=12, batch_size=5, seed=7, simulated_labeler=True,
                         judges=["vader", "afinn"])
    prompts = held_out_prompts(demo_dir)
    rows, samples = evaluate_policies({"first": first, "second": second}, tokenizer, prompts,
                                      reward_model=reward_model, reference=first, args=args)
    return rows, samples, prompts, tokenizer, first, args


def test_identical_policies_tie_and_have_no_kl(twin_evaluation):
    rows, samples, *_ = twin_evaluation
    assert [r["policy"] for r in rows] == ["first", "second"]
    assert samples["first"] == samples["second"]  # same weights, same seed: the same responses
    for row in rows:
        assert set(row) == set(COLUMNS + JUDGE_COLUMNS)
        for win in ("win_rate_vs_first", "labeler_win_vs_first", "vader_win_vs_first", "afinn_win_vs_first"):
            assert row[win] == 0.5  # every prompt a tie
        assert row["kl_to_reference"] == pytest.approx(0.0, abs=1e-5)
        assert math.isfinite(row["rm_score_mean"]) and row["rm_score_std"] > 0  # a real, varied judge
    first, second = ({k: v for k, v in r.items() if k != "policy"} for r in rows)
    assert first == pytest.approx(second, abs=1e-6)


def test_diversity_and_eos_match_a_recount_of_the_samples(twin_evaluation):
    rows, samples, prompts, tokenizer, policy, args = twin_evaluation
    # The same seeded sampling again, to get the token ids behind the returned texts.
    _, responses = sample_responses(policy, tokenizer, prompts, response_length=args.response_length,
                                    temperature=args.temperature, seed=args.seed, batch_size=args.batch_size)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    ids = [[t for t in r.tolist() if t != pad] for r in responses]
    assert tokenizer.batch_decode(ids, skip_special_tokens=True) == samples["first"]

    finished = [eos in r for r in ids]
    assert 0 < sum(finished) < len(ids), "want both finished and cut-off responses"
    for r in ids:  # truncation after the first EOS: nothing follows it
        assert eos not in r[:-1]
    unigrams = [t for r in ids for t in r]
    bigrams = [tuple(r[i:i + 2]) for r in ids for i in range(len(r) - 1)]
    row = rows[0]
    assert row["distinct_1"] == pytest.approx(len(set(unigrams)) / len(unigrams))
    assert row["distinct_2"] == pytest.approx(len(set(bigrams)) / len(bigrams))
    assert row["eos_fraction"] == pytest.approx(sum(finished) / len(ids))
    assert row["response_length"] == pytest.approx(len(unigrams) / len(ids))
    assert row["mean_words"] == pytest.approx(sum(len(t.split()) for t in samples["first"]) / len(ids))
    assert 0 < row["distinct_1"] <= 1 and 0 < row["distinct_2"] <= 1


def test_write_report(twin_evaluation, tmp_path):
    rows, samples, prompts, *_ = twin_evaluation
    table = write_report(tmp_path / "eval", rows, samples, prompts, num_samples=3)

    results = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert results["results"] == rows
    assert results["prompts"] == prompts[:3]
    assert results["samples"] == {name: texts[:3] for name, texts in samples.items()}
    report = (tmp_path / "eval" / "report.md").read_text()
    assert table in report
    header = table.splitlines()[0]
    assert header == "| " + " | ".join(COLUMNS + JUDGE_COLUMNS) + " |"
    assert "| first | " in table and "| second | " in table and "| 0.5 |" in table
    for prompt in prompts[:3]:
        assert prompt.replace("|", "\\|") in report
    assert prompts[3] not in report


def test_evaluate_recipe_sft_against_base(demo_dir, sft_dir, reward_head_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    rows = run_recipe("evaluate", [
        "--config", str(REPO / "recipes/demo/evaluate.yaml"), "--dataset_name", str(demo_dir / "data/prompts"),
        "--policy_paths", str(sft_dir), str(demo_dir / "base"), "--policy_names", "sft", "base",
        "--reward_model_path", str(reward_head_dir), "--reference_model_path", str(sft_dir), "--output_dir", str(out),
        "--num_prompts", "8", "--response_length", "10", "--batch_size", "8"])

    assert [r["policy"] for r in rows] == ["sft", "base"]
    sft, base = rows
    assert sft["win_rate_vs_first"] == 0.5 and sft["kl_to_reference"] == pytest.approx(0.0, abs=1e-5)
    # the demo recipe also asks the labeler and both sentiment judges; the first policy ties with itself
    for win in ("labeler_win_vs_first", "vader_win_vs_first", "afinn_win_vs_first"):
        assert sft[win] == 0.5 and 0 <= base[win] <= 1
    assert base["kl_to_reference"] > 0  # base samples are likelier under base than under SFT
    for row in rows:
        assert all(math.isfinite(row[c]) for c in COLUMNS + JUDGE_COLUMNS if c != "policy"), row
        assert 0 <= row["eos_fraction"] <= 1 and 0 <= row["win_rate_vs_first"] <= 1
    results = json.loads((out / "eval_results.json").read_text())
    assert results["results"] == rows and len(results["prompts"]) == 8
    assert (out / "report.md").is_file()
    assert "Evaluation on 8 held-out prompts" in capsys.readouterr().out
