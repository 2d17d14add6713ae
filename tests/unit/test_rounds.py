"""The round driver's measures, on hand-computed numbers (the full loop runs in `make iterate`)."""

from rlhf_recipes.feedback.rounds import _pairwise_accuracy, rounds_table


def test_pairwise_accuracy_against_the_labelers_ranking():
    # labeler: 2 > 0 > 1; scores order 0 > 2 > 1: pairs (0,1) right, (0,2) wrong, (1,2) right
    assert _pairwise_accuracy([0.5, -1.0, 0.2], [2, 0, 1]) == (2, 3)
    assert _pairwise_accuracy([3.0, 2.0, 1.0, 0.0], [0, 1, 2, 3]) == (6, 6)


def test_rounds_table_has_one_row_per_round():
    row = {"comparisons": 10, "rm_accuracy_on_policy_before": None, "rm_accuracy_on_policy_after": None,
           "labeler_win_rate": 0.75, "kl": 3.0, "distinct_2": 0.6, "distinct_2_sft": 0.8, "mean_words": 8.0,
           "mean_words_sft": 10.0}
    table = rounds_table([{"round": 0, **row}, {"round": 1, **row, "rm_accuracy_on_policy_before": 0.7,
                                                "rm_accuracy_on_policy_after": 0.9}])
    lines = table.splitlines()
    assert len(lines) == 4 and "0.70 -> 0.90" in lines[3] and "- -> -" in lines[2]
