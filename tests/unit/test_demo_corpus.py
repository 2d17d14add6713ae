"""Tests for the embedded demo corpus and the simulated labeler."""

from __future__ import annotations

import random
import re
import statistics

import pytest

from rlhf_recipes.demo import corpus
from rlhf_recipes.demo.labeler import (
    LEXICON,
    labeler_breakdown,
    labeler_prefers,
    labeler_score,
    ranked_comparisons,
    sentiment_score,
)

PROMPT = "I watched this western last night and"
POSITIVE = " the acting was wonderful and the music was beautiful."
NEGATIVE = " the acting was wooden and the music was dull."
NEUTRAL = " the story follows a lonely farmer who returns home after the war."


# ------------------------------------------------------------------------------------------------ determinism


def test_same_seed_same_output_different_seed_different_output():
    assert corpus.pretraining_texts(30, seed=0) == corpus.pretraining_texts(30, seed=0)
    assert corpus.pretraining_texts(30, seed=0) != corpus.pretraining_texts(30, seed=1)
    assert corpus.review_prompts(30, seed=0) == corpus.review_prompts(30, seed=0)
    assert corpus.review_prompts(30, seed=0) != corpus.review_prompts(30, seed=1)
    assert corpus.sft_demonstrations(30, seed=0) == corpus.sft_demonstrations(30, seed=0)
    assert corpus.sft_demonstrations(30, seed=0) != corpus.sft_demonstrations(30, seed=1)
    assert ranked_comparisons(10, seed=0) == ranked_comparisons(10, seed=0)
    assert ranked_comparisons(10, seed=0) != ranked_comparisons(10, seed=1)
    assert corpus.ptx_texts(30, seed=0) == corpus.ptx_texts(30, seed=0)
    assert corpus.ptx_texts(30, seed=0) != corpus.pretraining_texts(30, seed=0)
    a = corpus.sample_continuations(PROMPT, 6, random.Random(3))
    b = corpus.sample_continuations(PROMPT, 6, random.Random(3))
    assert a == b


def test_global_random_state_untouched():
    random.seed(1234)
    state = random.getstate()
    corpus.pretraining_texts(10, seed=5)
    corpus.review_prompts(10, seed=5, split="eval")
    corpus.sft_demonstrations(10, seed=5)
    ranked_comparisons(3, seed=5)
    corpus.sample_continuations(PROMPT, 4, random.Random(0))
    assert random.getstate() == state


# ------------------------------------------------------------------------------------------------ texts & prompts


def test_pretraining_texts_shape_and_vocabulary_size():
    texts = corpus.pretraining_texts(2000, seed=0)
    assert len(texts) == 2000
    lengths = [len(t.split()) for t in texts]
    assert min(lengths) >= 20 and max(lengths) <= 65
    assert all(t[-1] in ".!?" and t == t.strip() for t in texts)
    vocab = {w for t in texts for w in re.findall(r"[a-z]+", t.lower())}
    assert 200 <= len(vocab) <= 1500
    assert len(set(texts)) > 1900  # varied


def test_pretraining_texts_have_mixed_sentiment():
    sent = [sentiment_score(t) for t in corpus.pretraining_texts(600, seed=2)]
    assert sum(s > 0.2 for s in sent) > 100
    assert sum(s < -0.2 for s in sent) > 100


def test_review_prompts_format():
    for split in ("train", "eval"):
        prompts = corpus.review_prompts(500, seed=0, split=split)
        assert len(prompts) == len(set(prompts)) == 500
        for p in prompts:
            assert p == p.strip() and not p.endswith(" ")
            assert 5 <= len(p.split()) <= 12


def test_train_and_eval_prompts_are_disjoint():
    train = set(corpus.review_prompts(3000, seed=0, split="train")) | set(corpus.review_prompts(1000, seed=7))
    evals = set(corpus.review_prompts(1000, seed=0, split="eval")) | set(corpus.review_prompts(500, 7, "eval"))
    assert not train & evals
    # demos and comparisons only use train prompts
    assert not {r["prompt"] for r in corpus.sft_demonstrations(300)} & evals
    assert not {r["prompt"] for r in ranked_comparisons(50)} & evals


def test_invalid_split_raises():
    with pytest.raises(ValueError):
        corpus.review_prompts(3, split="test")


# ------------------------------------------------------------------------------------------------ continuations


def test_sample_continuations_distinct_and_span_qualities():
    rng = random.Random(0)
    for prompt in corpus.review_prompts(20, seed=3):
        cands = corpus.sample_continuations(prompt, 9, rng)
        assert len(cands) == len(set(cands)) == 9
        assert all(c.startswith(" ") and c.strip() for c in cands)
        scores = [labeler_score(prompt, c) for c in cands]
        assert min(scores) < -0.3 and max(scores) > 0.0
    assert len(corpus.sample_continuations(PROMPT, 25, rng)) == 25


def test_sft_demonstrations_format_and_sentiment_mix():
    rows = corpus.sft_demonstrations(600, seed=0)
    assert all(set(r) == {"prompt", "completion"} for r in rows)
    for r in rows:
        assert not r["prompt"].endswith(" ")
        assert r["completion"].startswith(" ") and r["completion"].endswith(".")
        assert 5 <= len(r["completion"].split()) <= 25
    sent = [sentiment_score(r["completion"]) for r in rows]
    frac_pos = sum(s > 0.2 for s in sent) / len(sent)
    frac_neg = sum(s < -0.2 for s in sent) / len(sent)
    assert 0.2 < frac_pos < 0.5, frac_pos  # not mostly positive: PPO has room to improve
    assert frac_neg > 0.2, frac_neg
    assert abs(statistics.mean(sent)) < 0.25


def test_ranked_comparisons_sorted_distinct_with_gap():
    for k in (2, 4):
        rows = ranked_comparisons(40, k=k, seed=1)
        assert len(rows) == 40
        for r in rows:
            assert set(r) == {"prompt", "responses"}
            resp = r["responses"]
            assert len(resp) == len(set(resp)) == k
            scores = [labeler_score(r["prompt"], x) for x in resp]
            assert all(a - b >= 0.05 - 1e-9 for a, b in zip(scores, scores[1:], strict=False)), scores


def test_best_of_k_beats_sft_on_average():
    sft = [labeler_score(r["prompt"], r["completion"]) for r in corpus.sft_demonstrations(300, seed=4)]
    best = [labeler_score(r["prompt"], r["responses"][0]) for r in ranked_comparisons(150, seed=4)]
    assert statistics.mean(best) > statistics.mean(sft) + 0.1


# ------------------------------------------------------------------------------------------------ labeler rules


def test_labeler_prefers_positive_fluent_over_negative_fluent():
    assert labeler_score(PROMPT, POSITIVE) > labeler_score(PROMPT, NEUTRAL) > labeler_score(PROMPT, NEGATIVE)
    assert labeler_prefers(PROMPT, POSITIVE, NEGATIVE)
    assert not labeler_prefers(PROMPT, NEGATIVE, POSITIVE)
    assert not labeler_prefers(PROMPT, POSITIVE, POSITIVE)  # ties are not preferences


def test_repetition_scores_below_fluent_neutral():
    neutral = labeler_score(PROMPT, NEUTRAL)
    for degenerate in (
        " great great great great great",
        " great great great great great.",
        " I loved it. I loved it. I loved it. I loved it.",
        " brilliant, wonderful, superb, perfect, stunning, amazing.",
    ):
        assert labeler_score(PROMPT, degenerate) < neutral, degenerate


def test_empty_and_broken_responses_score_low():
    assert labeler_score(PROMPT, "") == -2.0
    assert labeler_score(PROMPT, "   ") == -2.0
    for fluent in (POSITIVE, NEGATIVE, NEUTRAL):
        assert labeler_score(PROMPT, "") < labeler_score(PROMPT, fluent)
    assert labeler_score(PROMPT, " the acting was") < labeler_score(PROMPT, NEUTRAL)  # truncated
    off_topic = " I need to buy milk and bread on the way home."
    assert labeler_score(PROMPT, off_topic) < labeler_score(PROMPT, NEUTRAL)
    shuffled = " music the dull and was acting the wooden was"
    assert labeler_score(PROMPT, shuffled) < labeler_score(PROMPT, NEGATIVE)
    too_long = POSITIVE + " The story follows a lonely farmer who returns home after the war." * 3
    assert labeler_score(PROMPT, too_long) < labeler_score(PROMPT, POSITIVE)


def test_negation_flips_sentiment():
    assert sentiment_score("the film was good.") > 0 > sentiment_score("the film was not good.")
    assert sentiment_score("the film was bad.") < 0 < sentiment_score("the film was not bad.")
    assert sentiment_score("it wasn't funny.") < 0
    assert sentiment_score("there was not a single dull scene in it.") > 0
    assert sentiment_score("I would not recommend it.") < 0 < sentiment_score("I would recommend it.")
    # negation scope ends at a clause boundary
    assert sentiment_score("it was not long, but it was great.") > 0
    assert labeler_score(PROMPT, " the film was not good at all.") < labeler_score(PROMPT, " the film was good.")


def test_sentiment_details():
    assert sentiment_score("") == 0.0
    assert sentiment_score("the film was very good.") > sentiment_score("the film was good.")
    assert sentiment_score("great great great great") == sentiment_score("great")  # no credit for repeats
    assert sentiment_score("the music was good, but the plot was boring.") < 0  # the clause after "but" wins
    assert sentiment_score("the plot was boring, but the music was good.") > 0


def test_labeler_is_bounded_and_deterministic():
    rng = random.Random(11)
    for prompt in corpus.review_prompts(15, seed=9, split="eval"):
        for c in corpus.sample_continuations(prompt, 9, rng):
            s = labeler_score(prompt, c)
            assert -2.0 <= s <= 2.0
            assert s == labeler_score(prompt, c)
    b = labeler_breakdown(PROMPT, POSITIVE)
    assert b["total"] == labeler_score(PROMPT, POSITIVE)
    assert b["sentiment"] > 0.5 and b["repetition"] == 0.0


def test_corpus_adjectives_are_in_the_labeler_lexicon():
    for pos, neg in corpus._ADJ_CONTEXTS.values():
        assert all(LEXICON[a] > 0 for a in pos)
        assert all(LEXICON[a] < 0 for a in neg)
    assert not {w for w in corpus.NEUTRAL_ADJECTIVES if w in LEXICON}


def test_love_story_is_an_aspect_not_a_feeling():
    # PPO on the demo learned to praise "the love story" everywhere while "love" in it counted as sentiment
    assert sentiment_score(" the love story was fine.") == sentiment_score(" the plot was fine.")
    assert sentiment_score(" I love this film.") > 0
