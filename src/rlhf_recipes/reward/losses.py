"""The reward model's loss, as pure functions of scalar rewards (torch only, no model, no transformers).

InstructGPT (Ouyang et al. 2022, eq. 1) trains r_theta on rankings of K responses to one prompt x:

    loss(theta) = -1 / C(K, 2) * E_{(x, y_w, y_l)} [ log sigmoid( r_theta(x, y_w) - r_theta(x, y_l) ) ]

where y_w is the preferred response of each of the C(K, 2) pairs a ranking of K implies. The loss only sees reward
*differences*, so adding a constant to every reward changes neither the loss nor the accuracy; that is why the
trained model needs a separate normalisation (see `rlhf_recipes.reward.normalize`).

Two ways to batch a ranking (`ranking_batching`):

* `pairs` (the default, what TRL does): expand every ranking into its C(K, 2) independent (chosen, rejected) pairs
  and shuffle them into the dataset. Each completion is then scored K - 1 times per epoch, in different batches.
* `grouped` (InstructGPT sec. 3.5): one batch element is one prompt with its K responses; the K completions are
  scored with K forward passes and the loss averages the C(K, 2) comparisons of that prompt. InstructGPT found that
  treating the comparisons as independent data points makes the model overfit after one epoch (the comparisons of a
  prompt are strongly correlated), and grouping them is also much cheaper: one forward pass per completion instead
  of K - 1.

On the same ranking both give the same loss value; they differ in how batches are formed and therefore in the
gradient noise and in the compute spent.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.rankings import ranking_pairs


def expand_ranking(responses: list[str], ties: list[list[int]] | None = None) -> list[tuple[str, str]]:
    """(chosen, rejected) for every pair of a ranking ordered best to worst: C(K, 2) pairs, less the pairs inside a
    tie group (no order is invented between answers the labeler found equally good)."""
    return [(responses[i], responses[j]) for i, j in ranking_pairs(len(responses), ties)]


def pairwise_loss(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, margin: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over pairs of -log sigmoid(r_w - r_l [- margin]) (Bradley-Terry; log 2 when both rewards are equal)."""
    difference = chosen_rewards - rejected_rewards
    if margin is not None:
        difference = difference - margin
    return -F.logsigmoid(difference).mean()


def group_rewards(rewards: torch.Tensor, group_sizes: torch.Tensor | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Reshape the flat rewards of consecutive groups (sizes K_1, K_2, ...) into a padded [B, K_max] matrix.

    Returns the matrix and a boolean mask of its real entries.
    """
    sizes = [int(k) for k in group_sizes]
    if sum(sizes) != rewards.shape[0]:
        raise ValueError(f"group sizes {sizes} add up to {sum(sizes)}, but there are {rewards.shape[0]} rewards")
    k_max = max(sizes)
    matrix = rewards.new_zeros(len(sizes), k_max)
    mask = torch.zeros(len(sizes), k_max, dtype=torch.bool, device=rewards.device)
    for row, chunk in enumerate(torch.split(rewards, sizes)):
        matrix[row, : chunk.shape[0]] = chunk
        mask[row, : chunk.shape[0]] = True
    return matrix, mask


def tie_mask(tie_groups: torch.Tensor) -> torch.Tensor:
    """[B, K] tie group id per position (-1: in no group) -> [B, K, K], true where two positions share a group."""
    same = tie_groups.unsqueeze(-1) == tie_groups.unsqueeze(-2)
    return same & (tie_groups >= 0).unsqueeze(-1)


def ranking_differences(rewards: torch.Tensor, mask: torch.Tensor, tie_groups: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """r_w - r_l for every pair of every ranking: `rewards` [B, K] ordered best to worst, `mask` [B, K] real entries,
    `tie_groups` [B, K] optional tie group ids (-1: none).

    Returns `differences` [B, K, K] (entry i, j is r_i - r_j) and `pair_mask` [B, K, K], true where i < j, both
    responses exist and they are not tied, i.e. on the comparisons `ranking_pairs(K_b, ties)` gives.
    """
    differences = rewards.unsqueeze(-1) - rewards.unsqueeze(-2)
    k = rewards.shape[-1]
    upper = torch.ones(k, k, dtype=torch.bool, device=rewards.device).triu(diagonal=1)
    pair_mask = upper & mask.unsqueeze(-1) & mask.unsqueeze(-2)
    if tie_groups is not None:
        pair_mask = pair_mask & ~tie_mask(tie_groups)
    return differences, pair_mask


def grouped_ranking_loss(rewards: torch.Tensor, mask: torch.Tensor | None = None,
                         tie_groups: torch.Tensor | None = None) -> torch.Tensor:
    """InstructGPT's ranking loss: per prompt, -1/C(K,2) * sum over its pairs of log sigmoid(r_w - r_l); mean over prompts.

    `rewards` [B, K] holds each prompt's rewards ordered best to worst; `mask` [B, K] marks the real responses when
    prompts have different K (padding entries are ignored); `tie_groups` [B, K] leaves the pairs inside a tie group
    out (the mean is then over the remaining pairs). Every prompt weighs the same whatever its K.
    """
    if mask is None:
        mask = torch.ones_like(rewards, dtype=torch.bool)
    differences, pair_mask = ranking_differences(rewards, mask, tie_groups)
    num_pairs = pair_mask.sum(dim=(-1, -2))
    if bool((num_pairs == 0).any()):
        raise ValueError("every ranking needs at least two responses")
    log_likelihood = (F.logsigmoid(differences) * pair_mask).sum(dim=(-1, -2))
    return (-log_likelihood / num_pairs).mean()


def pair_statistics(differences: torch.Tensor) -> dict[str, torch.Tensor]:
    """Accuracy (share of pairs with r_w > r_l; a tie counts as wrong) and mean margin r_w - r_l of some pairs."""
    return {"accuracy": (differences > 0).float().mean(), "margin": differences.mean()}
