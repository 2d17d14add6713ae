"""The independent sentiment judges and the held-out openings of the demo's generalisation check."""

from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("vaderSentiment", reason="the judges need the `judges` extra")
pytest.importorskip("afinn", reason="the judges need the `judges` extra")

from rlhf_recipes.demo import corpus  # noqa: E402
from rlhf_recipes.demo.base import build_base_model  # noqa: E402
from rlhf_recipes.demo.judges import JUDGES, judge_scores, judge_win_rates  # noqa: E402


def test_afinn_sums_word_valences():
    # AFINN-165: good +3, bad -3, wonderful +4, awful -3; "film" and "acting" carry none.
    texts = [" the acting was good but the plot was bad.", " a wonderful film.", " an awful film.", " a film."]
    assert judge_scores("afinn", texts) == [0.0, 4.0, -3.0, 0.0]


def test_vader_orders_sentiment_and_stays_in_range():
    good, awful, neutral = judge_scores("vader", [" a wonderful film.", " an awful film.", " a film."])
    assert good > neutral == 0.0 > awful
    assert -1.0 <= awful and good <= 1.0
    # VADER weighs the clause after "but": good-but-bad reads as bad, bad-but-good as good.
    bad_last, good_last = judge_scores("vader", ["good but bad", "bad but good"])
    assert bad_last < 0 < good_last


def test_win_rate_per_prompt_ties_count_half():
    policy = [" a wonderful film.", " an awful film.", " a film.", " a great and moving story."]
    sft = [" an awful film.", " a wonderful film.", " a film.", " a dull story."]
    # win, loss, tie, win on both judges -> (1 + 0 + 0.5 + 1) / 4
    assert judge_win_rates(JUDGES, policy, sft) == {"vader": 0.625, "afinn": 0.625}


def test_unknown_judge_is_named():
    with pytest.raises(ValueError, match="Unknown judge 'textblob'.*vader"):
        judge_scores("textblob", ["fine"])


def _opening(text: str) -> str:
    return " ".join(text.lower().replace(",", " ").split()[:4])


def test_heldout_prompts_are_distinct_seeded_and_not_from_training_templates():
    prompts = corpus.heldout_prompts(256, seed=0)
    assert len(set(prompts)) == 256 and prompts == corpus.heldout_prompts(256, seed=0)
    assert prompts != corpus.heldout_prompts(256, seed=1)
    training_openings = {_opening(t) for t in corpus._PROMPT_TEMPLATES}
    assert not training_openings & {_opening(t) for t in corpus._HELDOUT_TEMPLATES}


def test_no_stage_trained_on_a_heldout_prompt_or_its_opening(demo_dir):
    """Every training split the demo writes, and the base model's pretraining text, against the held-out set."""
    data = demo_dir / "data"
    heldout = [json.loads(line)["prompt"] for line in open(data / "heldout/prompts.jsonl")]
    assert len(heldout) == 256

    training_prompts, texts = [], []
    for name in ("sft/train", "sft/test", "reward/train", "reward/test", "prompts/train", "prompts/test",
                 "ptx/train"):
        for line in open(data / f"{name}.jsonl"):
            row = json.loads(line)
            if "prompt" in row:
                training_prompts.append(row["prompt"])
            texts += [row.get("prompt", ""), row.get("completion", ""), row.get("text", ""), *row.get("responses", [])]
    num_texts = build_base_model.__kwdefaults__["num_texts"]
    texts += corpus.pretraining_texts(num_texts, seed=0)  # what `demo.base` pretrains on (seed 0, as `make demo`)

    everything = "\n".join(texts).lower()
    sentence_openings = {_opening(s) for t in texts for s in re.split(r"(?<=[.!?])\s+", t) if s}
    sentence_openings |= {_opening(p) for p in training_prompts}
    leaked = [p for p in heldout if p.lower() in everything]
    shared_openings = [p for p in heldout if _opening(p) in sentence_openings]
    assert not leaked, f"held-out prompts found in training data: {leaked[:3]}"
    assert not shared_openings, f"held-out openings that start a training sentence: {shared_openings[:3]}"
    # the check can fail: a training prompt's opening is found by the same test
    assert _opening(training_prompts[0]) in sentence_openings
