from __future__ import annotations

import math

import pytest

from rlhf_recipes.evaluation_metrics import distinct_n, eos_fraction, markdown_table, mean_std, win_rate


def test_distinct_n_strings():
    responses = ["a a b", "b c"]
    # unigrams: a a b | b c -> 5 in total, unique {a, b, c} = 3 -> 3/5
    assert distinct_n(responses, 1) == pytest.approx(3 / 5)
    # bigrams: (a a) (a b) | (b c) -> 3 in total, all different -> 3/3 (no bigram spans two responses)
    assert distinct_n(responses, 2) == pytest.approx(1.0)
    # trigrams: (a a b) | none ("b c" is too short) -> 1/1
    assert distinct_n(responses, 3) == pytest.approx(1.0)
    # no 4-grams at all -> 0
    assert distinct_n(responses, 4) == 0.0


def test_distinct_n_token_ids():
    responses = [[1, 2, 1, 2], [1, 2]]
    # unigrams: 1 2 1 2 | 1 2 -> 6 total, unique {1, 2} -> 2/6
    assert distinct_n(responses, 1) == pytest.approx(2 / 6)
    # bigrams: (1 2) (2 1) (1 2) | (1 2) -> 4 total, unique {(1 2), (2 1)} -> 2/4
    assert distinct_n(responses, 2) == pytest.approx(0.5)


def test_distinct_n_edge_cases():
    assert distinct_n([], 1) == 0.0
    assert distinct_n(["", ""], 1) == 0.0
    with pytest.raises(ValueError):
        distinct_n(["a"], 0)


def test_eos_fraction():
    eos = 2
    responses = [[5, 6, 2], [5, 6, 7], [2], []]
    # rows 0 and 2 contain eos -> 2/4
    assert eos_fraction(responses, eos) == pytest.approx(0.5)
    # several eos ids: 7 also ends a response -> rows 0, 1, 2 -> 3/4
    assert eos_fraction(responses, [2, 7]) == pytest.approx(0.75)
    assert eos_fraction([], eos) == 0.0


def test_win_rate_with_tie():
    scores = [1.0, 0.5, 2.0, -1.0]
    baseline = [0.0, 0.5, 3.0, -2.0]
    # win, tie (0.5), loss, win -> (1 + 0.5 + 0 + 1) / 4 = 0.625
    assert win_rate(scores, baseline) == pytest.approx(0.625)
    assert win_rate([1.0], [1.0]) == 0.5
    with pytest.raises(ValueError):
        win_rate([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        win_rate([], [])


def test_mean_std_population():
    # mean 5; squared deviations 9 1 1 1 0 0 4 16 = 32; population variance 32/8 = 4 -> std 2
    mean, std = mean_std([2, 4, 4, 4, 5, 5, 7, 9])
    assert mean == pytest.approx(5.0)
    assert std == pytest.approx(2.0)
    assert mean_std([3.0]) == (3.0, 0.0)
    with pytest.raises(ValueError):
        mean_std([])


def test_markdown_table():
    rows = [
        {"model": "sft", "reward": 1.234567, "kl": 0.0, "n": 128},
        {"model": "ppo|kl", "reward": 12345.678, "n": 64},
    ]
    table = markdown_table(rows, ["model", "reward", "kl", "n"])
    expected = (
        "| model | reward | kl | n |\n"
        "| --- | --- | --- | --- |\n"
        "| sft | 1.235 | 0 | 128 |\n"  # 1.234567 -> 4 significant digits -> 1.235
        "| ppo\\|kl | 1.235e+04 |  | 64 |"  # '|' escaped, missing 'kl' empty, 12345.678 -> 1.235e+04
    )
    assert table == expected


def test_markdown_table_nan_and_no_rows():
    assert markdown_table([], ["a"]) == "| a |\n| --- |"
    assert markdown_table([{"a": math.nan}], ["a"]).endswith("| nan |")
