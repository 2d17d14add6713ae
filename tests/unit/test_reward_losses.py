"""The reward model's loss functions, checked against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_recipes.reward.losses import (
    expand_ranking,
    group_rewards,
    grouped_ranking_loss,
    pair_statistics,
    pairwise_loss,
    ranking_differences,
    ranking_pairs,
)


def log1p_exp(x: float) -> float:
    """-log sigmoid(-x) = log(1 + e^x), by hand."""
    return math.log(1.0 + math.exp(x))


def ranking_statistics(rewards: torch.Tensor) -> dict[str, torch.Tensor]:
    differences, pair_mask = ranking_differences(rewards, torch.ones_like(rewards, dtype=torch.bool))
    return pair_statistics(differences[pair_mask])


def test_equal_rewards_give_log_2():
    rewards = torch.tensor([0.3, -1.2, 5.0])
    assert pairwise_loss(rewards, rewards).item() == pytest.approx(math.log(2.0), abs=1e-7)
    assert grouped_ranking_loss(torch.full((2, 4), 0.7)).item() == pytest.approx(math.log(2.0), abs=1e-7)


def test_pairwise_loss_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    # -log sigmoid(1) = log(1 + e^-1); -log sigmoid(-1) = log(1 + e^1)
    expected = (log1p_exp(-1.0) + log1p_exp(1.0)) / 2
    assert pairwise_loss(chosen, rejected).item() == pytest.approx(expected, rel=1e-6)
    # a margin of 1 shifts the first difference to 0 and the second to -2
    expected_margin = (math.log(2.0) + log1p_exp(2.0)) / 2
    assert pairwise_loss(chosen, rejected, torch.tensor([1.0, 1.0])).item() == pytest.approx(expected_margin, rel=1e-6)


def test_constant_shift_changes_neither_loss_nor_accuracy():
    torch.manual_seed(0)
    rewards = torch.randn(5, 4)
    shifted = rewards + 17.5
    assert grouped_ranking_loss(shifted).item() == pytest.approx(grouped_ranking_loss(rewards).item(), abs=1e-5)
    chosen, rejected = rewards[:, 0], rewards[:, 1]
    assert pairwise_loss(chosen + 3.0, rejected + 3.0).item() == pytest.approx(
        pairwise_loss(chosen, rejected).item(), abs=1e-6)
    before, after = ranking_statistics(rewards), ranking_statistics(shifted)
    assert 0.0 < before["accuracy"].item() < 1.0  # a real mix of right and wrong orders
    assert after["accuracy"].item() == before["accuracy"].item()
    assert after["margin"].item() == pytest.approx(before["margin"].item(), abs=1e-5)


@pytest.mark.parametrize("k", range(2, 10))
def test_ranking_of_k_gives_k_choose_2_pairs(k):
    pairs = ranking_pairs(k)
    assert len(pairs) == math.comb(k, 2)
    assert all(winner < loser for winner, loser in pairs)  # best first: the lower index is preferred
    responses = [f"r{i}" for i in range(k)]
    expanded = expand_ranking(responses)
    assert len(expanded) == math.comb(k, 2) and len(set(expanded)) == len(expanded)
    assert expanded[0] == ("r0", "r1") and expanded[-1] == (f"r{k - 2}", f"r{k - 1}")


def test_a_pair_with_a_missing_response_on_either_side_is_left_out():
    """The mask is checked for both responses of a pair, wherever the missing one sits (not only trailing padding)."""
    rewards = torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0], [1.0, 0.0, 2.0]])
    mask = torch.tensor([[True, False, True], [False, True, True], [True, True, True]])
    differences, pair_mask = ranking_differences(rewards, mask)
    assert pair_mask.nonzero().tolist() == [[0, 0, 2], [1, 1, 2], [2, 0, 1], [2, 0, 2], [2, 1, 2]]
    assert differences[pair_mask].tolist() == [2.0, -1.0, 1.0, -1.0, -2.0]  # r_i - r_j of each pair


def test_a_ranking_left_with_one_response_is_refused_by_the_grouped_loss():
    rewards = torch.tensor([[1.0, 0.0, 0.0], [2.0, 1.0, 0.0]])
    mask = torch.tensor([[True, False, False], [True, True, True]])
    with pytest.raises(ValueError, match="^every ranking needs at least two responses$"):
        grouped_ranking_loss(rewards, mask)


def test_ranking_of_one_is_refused():
    with pytest.raises(ValueError, match="at least two"):
        ranking_pairs(1)


def test_grouped_loss_by_hand_k3():
    rewards = torch.tensor([[3.0, 1.0, 2.0]])  # best to worst as labelled; the model swapped the last two
    # pairs (0,1): d=2, (0,2): d=1, (1,2): d=-1
    expected = (log1p_exp(-2.0) + log1p_exp(-1.0) + log1p_exp(1.0)) / 3
    assert grouped_ranking_loss(rewards).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("k", [2, 4, 9])
def test_pairs_and_grouped_give_the_same_loss_on_one_ranking(k):
    torch.manual_seed(k)
    rewards = torch.randn(k)
    winners = torch.tensor([i for i, _ in ranking_pairs(k)])
    losers = torch.tensor([j for _, j in ranking_pairs(k)])
    pairs = pairwise_loss(rewards[winners], rewards[losers])
    grouped = grouped_ranking_loss(rewards.unsqueeze(0))
    assert grouped.item() == pytest.approx(pairs.item(), rel=1e-6)


def test_grouped_loss_weighs_every_prompt_the_same_whatever_its_k():
    flat = torch.tensor([1.0, 0.0, 2.0, 0.0, 0.0, -1.0])  # a ranking of 2, then one of 4
    matrix, mask = group_rewards(flat, [2, 4])
    assert mask.tolist() == [[True, True, False, False], [True, True, True, True]]
    first = log1p_exp(-1.0)  # one pair, difference 1
    # pairs of (2, 0, 0, -1): differences 2, 2, 3, 0, 1, 1
    second = (2 * log1p_exp(-2.0) + log1p_exp(-3.0) + math.log(2.0) + 2 * log1p_exp(-1.0)) / 6
    assert grouped_ranking_loss(matrix, mask).item() == pytest.approx((first + second) / 2, rel=1e-6)


def test_group_rewards_checks_the_sizes():
    with pytest.raises(ValueError, match="add up"):
        group_rewards(torch.zeros(5), [2, 2])


def test_accuracy_and_margin_by_hand():
    differences = torch.tensor([1.0, -0.5, 0.0, 2.5])
    stats = pair_statistics(differences)
    assert stats["accuracy"].item() == pytest.approx(0.25 + 0.25)  # a tie counts as wrong
    assert stats["margin"].item() == pytest.approx(0.75)


def test_grouped_loss_gradient_pushes_winners_up():
    rewards = torch.zeros(1, 3, requires_grad=True)
    grouped_ranking_loss(rewards).backward()
    grad = rewards.grad[0]
    assert grad[0] < 0 < grad[2] and grad[1].abs() < 1e-7  # descent raises the best, lowers the worst


def test_ranking_pairs_with_ties_and_selections():
    # K=4, the 2nd and 3rd tied: C(4,2)=6 pairs less the tied one.
    assert ranking_pairs(4, [[1, 2]]) == [(0, 1), (0, 2), (0, 3), (1, 3), (2, 3)]
    assert ranking_pairs(4, selection="best_vs_rest") == [(0, 1), (0, 2), (0, 3)]
    assert ranking_pairs(4, selection="best_vs_worst") == [(0, 3)]
    # A tie for first: both top responses count as best, and are not compared with each other.
    assert ranking_pairs(3, [[0, 1]], "best_vs_rest") == [(0, 2), (1, 2)]
    assert ranking_pairs(4, [[2, 3]], "best_vs_worst") == [(0, 2), (0, 3)]


def test_ties_problem_names_what_is_wrong():
    from rlhf_recipes.data import ties_problem

    assert ties_problem(None, 3) is None and ties_problem([[1, 2]], 3) is None
    assert "adjacent" in ties_problem([[0, 2]], 3)
    assert "outside" in ties_problem([[2, 3]], 3)
    assert "two tie groups" in ties_problem([[0, 1], [1, 2]], 4)
    assert "list" in ties_problem("0,1", 3)
    assert "says nothing" in ties_problem([[0, 1, 2]], 3)
