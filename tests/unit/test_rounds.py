"""The round driver's measures and tables, on hand-computed numbers (the loop itself: tests/integration/test_iterate_rounds.py)."""

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
    assert lines[0].startswith("| method | round |") and lines[2].startswith("| ppo | 0 |")  # files before DPO: PPO


def test_rounds_table_reports_every_recorded_judge_but_the_labeler_once():
    row = {"round": 0, "comparisons": 10, "rm_accuracy_on_policy_before": None, "rm_accuracy_on_policy_after": None,
           "labeler_win_rate": 0.75, "vader_win_rate": 0.8125, "afinn_win_rate": 0.5, "kl": 3.0, "distinct_2": 0.6,
           "distinct_2_sft": 0.8, "mean_words": 8.0, "mean_words_sft": 10.0}
    head, _, cells = rounds_table([row]).splitlines()
    assert head.count("win rate") == 3 and "afinn win rate | vader win rate" in head
    assert "| 0.75 | 0.50 | 0.81 |" in cells


def test_each_round_starts_ppo_at_the_kl_coefficient_the_last_run_ended_with(tmp_path):
    from rlhf_recipes.feedback.rounds import _kl_coef_flags

    (tmp_path / "stage_metrics.json").write_text('{"objective/kl_coef": 0.0731, "objective/kl": 5.0}')
    assert _kl_coef_flags(str(tmp_path), carry=True) == ["--kl_coef", "0.0731"]
    assert _kl_coef_flags(str(tmp_path), carry=False) == []  # the recipe's own kl_coef
    assert _kl_coef_flags(str(tmp_path / "missing"), carry=True) == []


def test_combined_rounds_of_two_loops_carry_their_method(tmp_path, capsys):
    import json

    from rlhf_recipes.feedback.rounds import RoundsTableArguments, combine_rounds

    row = {"comparisons": 10, "rm_accuracy_on_policy_before": None, "rm_accuracy_on_policy_after": None,
           "labeler_win_rate": 0.75, "kl": 3.0, "distinct_2": 0.6, "distinct_2_sft": 0.8, "mean_words": 8.0,
           "mean_words_sft": 10.0}
    ppo, dpo = tmp_path / "ppo.json", tmp_path / "dpo.json"
    ppo.write_text(json.dumps([{"round": 0, **row}, {"round": 1, **row, "kl": 4.0}]))  # written before `method`
    dpo.write_text(json.dumps([{"round": 0, "method": "dpo", **row, "kl": 1.5}]))
    rounds = combine_rounds(RoundsTableArguments([str(ppo), str(dpo)], output=str(tmp_path / "out/rounds.json")))
    assert [(r["method"], r["round"], r["kl"]) for r in rounds] == [("ppo", 0, 3.0), ("ppo", 1, 4.0), ("dpo", 0, 1.5)]
    table = (tmp_path / "out/rounds.md").read_text().splitlines()
    assert [line.split(" | ")[0:2] for line in table[2:]] == [["| ppo", "0"], ["| ppo", "1"], ["| dpo", "0"]]
    assert "| 4.00 |" in table[3] and "| 1.50 |" in table[4]
    assert json.loads((tmp_path / "out/rounds.json").read_text()) == rounds
    assert (tmp_path / "out/rounds.png").stat().st_size > 0
    assert capsys.readouterr().out.strip() == "\n".join(table)
