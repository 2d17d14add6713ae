"""Unit tests for rlhf_recipes.ppo.core, on small hand-worked numbers."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode  # records the ops inside forward and backward

from rlhf_recipes.ppo.core import (
    AdaptiveKLController,
    FixedKLController,
    compute_gae,
    entropy_from_logits,
    first_true_indices,
    kl_estimate,
    logprobs_from_logits,
    make_kl_controller,
    masked_mean,
    masked_var,
    masked_whiten,
    per_token_rewards,
    policy_loss,
    short_response_penalty,
    truncate_after_stop_token,
    value_loss,
)


def close(actual: torch.Tensor | float, expected, atol: float = 1e-4) -> None:
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=torch.float64), torch.as_tensor(expected, dtype=torch.float64), atol=atol, rtol=0
    )


# --- masked statistics -----------------------------------------------------------------------------------------------


def test_masked_mean_all_and_per_row():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    close(masked_mean(x, mask), 7.0 / 3.0)  # (1 + 2 + 4) / 3
    close(masked_mean(x, mask, dim=1), [1.5, 4.0])  # (1 + 2) / 2, 4 / 1
    close(masked_mean(x, mask.bool()), 7.0 / 3.0)  # bool mask works the same


def test_masked_var_is_population_variance():
    # [1, 2, 3, 4]: mean 2.5, squared deviations 2.25, 0.25, 0.25, 2.25 -> sum 5, / 4 = 1.25 (not 5 / 3).
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    close(masked_var(x, mask), 1.25)


def test_masked_whiten_reference_values():
    # std = sqrt(1.25) = 1.1180; (1 - 2.5) / 1.1180 = -1.3416, (2 - 2.5) / 1.1180 = -0.4472, ...
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    mask = torch.ones_like(x, dtype=torch.bool)
    close(masked_whiten(x, mask), [[-1.3416, -0.4472, 0.4472, 1.3416]])
    # shift_mean=False adds the mean 2.5 back.
    close(masked_whiten(x, mask, shift_mean=False), [[1.1584, 2.0528, 2.9472, 3.8416]])


def test_masked_whiten_ignores_masked_positions():
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    a = torch.tensor([[1.0, 2.0, 50.0], [3.0, 4.0, -7.0]])
    b = torch.tensor([[1.0, 2.0, -1e6], [3.0, 4.0, float("inf")]])
    out_a, out_b = masked_whiten(a, mask), masked_whiten(b, mask)
    torch.testing.assert_close(out_a, out_b)
    close(out_a, [[-1.3416, -0.4472, 0.0], [0.4472, 1.3416, 0.0]])  # same as whitening [1, 2, 3, 4]; 0 at pads
    assert torch.isfinite(out_b).all()


def test_masked_whiten_constant_input_stays_finite():
    # All equal (e.g. every advantage the same): variance 0, so x - mu = 0 and the eps under the root keeps the
    # scale 1 / sqrt(0 + 1e-8) finite: 0 everywhere, or the mean 3 back with shift_mean=False (no NaN).
    x = torch.tensor([[3.0, 3.0, 3.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert masked_whiten(x, mask).tolist() == [[0.0, 0.0, 0.0, 0.0]]
    assert masked_whiten(x, mask, shift_mean=False).tolist() == [[3.0, 3.0, 3.0, 0.0]]


# --- logprobs and entropy --------------------------------------------------------------------------------------------


def test_logprobs_from_logits_hand_values():
    # Row logits [0, ln 3] are probabilities [0.25, 0.75]; logits [0, 0] are [0.5, 0.5].
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0]]])  # [B=1, T=2, V=2]
    tokens = torch.tensor([[1, 0]])
    close(logprobs_from_logits(logits, tokens), [[math.log(0.75), math.log(0.5)]])


def test_logprobs_from_logits_matches_log_softmax_and_bf16():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g) * 3
    tokens = torch.randint(0, 7, (2, 5), generator=g)
    expected = torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(logprobs_from_logits(logits, tokens), expected)
    bf16 = logprobs_from_logits(logits.bfloat16(), tokens)
    assert bf16.dtype == torch.float32  # computed in fp32
    expected_bf16 = torch.log_softmax(logits.bfloat16().float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(bf16, expected_bf16)


def test_entropy_from_logits_hand_values():
    # Uniform over 4 -> ln 4 = 1.386294; [0.25, 0.75] -> -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.562335.
    uniform = torch.zeros(1, 1, 4)
    close(entropy_from_logits(uniform), [[math.log(4.0)]])
    close(entropy_from_logits(torch.tensor([[[0.0, math.log(3.0)]]])), [[0.562335]])
    # Near-deterministic distribution: entropy ~ 0, no NaN from 0 * log 0.
    peaked = torch.tensor([[[0.0, -1e4, -1e4]]])
    close(entropy_from_logits(peaked), [[0.0]])


# --- response post-processing ----------------------------------------------------------------------------------------


def test_first_true_indices():
    bools = torch.tensor([[False, True, False, True], [False, False, False, False], [True, False, False, False]])
    out = first_true_indices(bools)
    assert out.tolist() == [1, 4, 0]  # no True -> row length 4
    assert out.dtype == torch.long
    assert first_true_indices(bools, dtype=torch.int32).dtype == torch.int32
    # The last dim is the row, whatever the rank: one row (1-D) or a batch of batches (3-D).
    assert first_true_indices(torch.tensor([False, False, True, True])).tolist() == 2
    assert first_true_indices(torch.stack([bools, bools.flip(-1)])).tolist() == [[1, 4, 0], [0, 4, 3]]


def test_truncate_after_stop_token():
    eos, pad = 2, 0
    responses = torch.tensor([[5, 6, eos, 7], [eos, 9, 9, eos], [5, 6, 7, 8]])
    out = truncate_after_stop_token(responses, stop_token_id=eos, pad_token_id=pad)
    assert out.tolist() == [[5, 6, eos, pad], [eos, pad, pad, pad], [5, 6, 7, 8]]
    assert responses.tolist()[0] == [5, 6, eos, 7]  # input not modified


# --- KL and rewards --------------------------------------------------------------------------------------------------


def test_kl_estimate_hand_values():
    logp = torch.tensor([-1.0, -2.0])
    ref = torch.tensor([-2.0, -1.0])
    close(kl_estimate(logp, ref, "k1"), [1.0, -1.0])
    # k3, token 0: log r = -1, r = e^-1 = 0.367879 -> (r - 1) - log r = -0.632121 + 1 = 0.367879.
    # k3, token 1: log r = +1, r = e = 2.718282 -> 1.718282 - 1 = 0.718282.
    close(kl_estimate(logp, ref, "k3"), [0.367879, 0.718282])
    assert torch.equal(kl_estimate(logp, ref), kl_estimate(logp, ref, "k1"))  # default is k1


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_estimate_zero_when_equal(estimator):
    logp = torch.tensor([[-0.1, -3.0, -12.0]])
    assert torch.equal(kl_estimate(logp, logp.clone(), estimator), torch.zeros_like(logp))


def test_kl_estimate_k3_nonnegative():
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(4, 16, generator=g) * 5
    ref = -torch.rand(4, 16, generator=g) * 5
    assert (kl_estimate(logp, ref, "k3") >= 0).all()
    assert (kl_estimate(logp, ref, "k1") < 0).any()  # k1 can be negative per token


def test_kl_estimate_unknown_raises():
    with pytest.raises(ValueError, match="k2"):
        kl_estimate(torch.zeros(1), torch.zeros(1), "k2")


def test_per_token_rewards_hand_values():
    scores = torch.tensor([1.0, -0.5])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, -0.2, 9.0]])  # 9.0 sits on a pad and must be ignored
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    rewards, non_score = per_token_rewards(scores, kl, 0.5, mask)
    # non-score = -0.5 * KL at real tokens, 0 at pads.
    close(non_score, [[-0.05, -0.1, -0.15], [-0.2, 0.1, 0.0]])
    # score added at the last real token: row 0 at t=2 (-0.15 + 1), row 1 at t=1 (0.1 - 0.5).
    close(rewards, [[-0.05, -0.1, 0.85], [-0.2, -0.4, 0.0]])


def test_short_response_penalty_hand_values():
    lengths = torch.tensor([0, 3, 8, 12, 20])
    # min_length 8, coef 2: 2 * (8 - L) / 8 below 8 tokens, nothing from 8 on
    close(short_response_penalty(lengths, 8, 2.0), [2.0, 1.25, 0.0, 0.0, 0.0])
    # min_length 1 penalises only the empty response: 2 * (1 - 0) / 1 = 2
    close(short_response_penalty(lengths, 1, 2.0), [2.0, 0.0, 0.0, 0.0, 0.0])
    off = short_response_penalty(lengths, 0, 2.0)
    assert off.tolist() == [0.0] * 5 and off.dtype == torch.float32  # off: float zeros like the penalty, not int


def test_per_token_rewards_sum_is_score_minus_beta_kl():
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(3, generator=g)
    kl = torch.randn(3, 6, generator=g)
    mask = torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]]).bool()
    beta = 0.05
    rewards, _ = per_token_rewards(scores, kl, beta, mask)
    expected = scores - beta * (kl * mask).sum(dim=1)
    torch.testing.assert_close(rewards.sum(dim=1), expected)
    assert (rewards[~mask] == 0).all()


def test_per_token_rewards_empty_row_gets_nothing():
    # Row 1 has no real token: its score has nowhere to go, so the row is all 0 (not the score at t=0).
    scores = torch.tensor([1.0, 5.0])
    kl = torch.tensor([[0.2, 0.4], [3.0, 3.0]])
    mask = torch.tensor([[1, 0], [0, 0]])
    rewards, non_score = per_token_rewards(scores, kl, 0.5, mask)
    close(rewards, [[0.9, 0.0], [0.0, 0.0]])  # -0.5 * 0.2 + 1
    close(non_score, [[-0.1, 0.0], [0.0, 0.0]])


# --- GAE -------------------------------------------------------------------------------------------------------------


def test_compute_gae_hand_values():
    # gamma 1, lam 0.95, V = [0.5, 0.2, -0.1], R = [0, 0, 1]; bootstrap after the last token is 0:
    #   t=2: delta = 1 - (-0.1) = 1.1, A = 1.1
    #   t=1: delta = 0 + (-0.1) - 0.2 = -0.3, A = -0.3 + 0.95 * 1.1 = 0.745
    #   t=0: delta = 0 + 0.2 - 0.5 = -0.3, A = -0.3 + 0.95 * 0.745 = 0.40775
    values = torch.tensor([[0.5, 0.2, -0.1]])
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    mask = torch.ones_like(values, dtype=torch.bool)
    adv, ret = compute_gae(rewards, values, mask, gamma=1.0, lam=0.95)
    close(adv, [[0.40775, 0.745, 1.1]])
    close(ret, [[0.90775, 0.945, 1.0]])  # A + V
    adv0, _ = compute_gae(rewards, values, mask, gamma=1.0, lam=0.0)
    close(adv0, [[-0.3, -0.3, 1.1]])  # lam 0: one-step TD errors


def test_compute_gae_discounted_lam1_is_monte_carlo():
    # gamma 0.9, lam 1, V = [1, 2], R = [0, 3]:
    #   t=1: delta = 3 - 2 = 1, A = 1
    #   t=0: delta = 0 + 0.9 * 2 - 1 = 0.8, A = 0.8 + 0.9 * 1 = 1.7 (= discounted return 2.7 - V_0)
    adv, ret = compute_gae(torch.tensor([[0.0, 3.0]]), torch.tensor([[1.0, 2.0]]), torch.ones(1, 2), 0.9, 1.0)
    close(adv, [[1.7, 1.0]])
    close(ret, [[2.7, 3.0]])


def test_compute_gae_padded_row_matches_unpadded():
    single_v = torch.tensor([[0.5, 0.2, -0.1]])
    single_r = torch.tensor([[0.0, 0.0, 1.0]])
    adv_single, ret_single = compute_gae(single_r, single_v, torch.ones(1, 3), 1.0, 0.95)

    # Row 0 is full length 5; row 1 is the single row above padded with junk values/rewards at the pads.
    values = torch.tensor([[0.1, 0.3, -0.2, 0.4, 0.0], [0.5, 0.2, -0.1, 7.0, -3.0]])
    rewards = torch.tensor([[0.0, 0.1, 0.0, -0.2, 2.0], [0.0, 0.0, 1.0, 5.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]).bool()
    adv, ret = compute_gae(rewards, values, mask, 1.0, 0.95)
    torch.testing.assert_close(adv[1, :3], adv_single[0])
    torch.testing.assert_close(ret[1, :3], ret_single[0])
    assert (adv[1, 3:] == 0).all() and (ret[1, 3:] == 0).all()
    # Row 0 is unaffected by row 1 being padded.
    adv_row0, _ = compute_gae(rewards[:1], values[:1], mask[:1], 1.0, 0.95)
    torch.testing.assert_close(adv[0], adv_row0[0])


def test_compute_gae_one_token_responses():
    # T = 1: no next value, A = R - V = 2 - 0.5 = 1.5, return 2; the empty row 1 gets 0 and 0.
    adv, ret = compute_gae(
        torch.tensor([[2.0], [4.0]]), torch.tensor([[0.5], [1.0]]), torch.tensor([[1], [0]]), 0.9, 0.95
    )
    close(adv, [[1.5], [0.0]])
    close(ret, [[2.0], [0.0]])


# --- PPO losses ------------------------------------------------------------------------------------------------------


def test_policy_loss_at_ratio_one():
    logp = torch.tensor([[-1.0, -2.0, -0.5]])
    adv = torch.tensor([[1.0, -2.0, 4.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss, stats = policy_loss(logp, logp.clone(), adv, mask, cliprange=0.2)
    close(loss, 0.5)  # mean(-A) over real tokens = mean(-1, 2) = 0.5
    close(stats["approxkl"], 0.0)
    close(stats["clipfrac"], 0.0)
    close(stats["ratio"], 1.0)


def test_policy_loss_clipping_positive_advantage():
    # eps = 0.2. Token 0: rho = 1.5, A = 2 -> -A rho = -3.0, clipped -A * 1.2 = -2.4 -> max -2.4 (clipped).
    # Token 1: rho = 1.1, A = 1 -> -1.1 both ways (inside the trust region, not counted as clipped).
    # Token 2 is a pad with absurd numbers. loss = (-2.4 - 1.1) / 2 = -1.75; clipfrac 0.5; mean rho 1.3.
    # approxkl = 0.5 * (ln(1.5)^2 + ln(1.1)^2) / 2 = 0.5 * (0.1644019 + 0.0090840) / 2 = 0.0433715.
    old = torch.tensor([[-1.0, -1.0, -1.0]])
    logp = old + torch.log(torch.tensor([[1.5, 1.1, 100.0]]))
    adv = torch.tensor([[2.0, 1.0, 1e6]])
    mask = torch.tensor([[True, True, False]])
    logp.requires_grad_(True)
    loss, stats = policy_loss(logp, old, adv, mask, cliprange=0.2)
    close(loss, -1.75)
    close(stats["clipfrac"], 0.5)
    close(stats["ratio"], 1.3)
    close(stats["approxkl"], 0.0433715)
    loss.backward()
    # d loss / d logp: clipped token has zero gradient; token 1: -A * rho / 2 = -0.55; pad: 0.
    close(logp.grad, [[0.0, -0.55, 0.0]])
    assert not stats["approxkl"].requires_grad


def test_policy_loss_clipping_negative_advantage():
    # rho = 0.5, A = -1, eps 0.2: -A rho = 0.5, -A clip(rho) = 0.8 -> 0.8 (clipped, pessimistic bound).
    old = torch.tensor([[0.0]])
    logp = torch.log(torch.tensor([[0.5]]))
    loss, stats = policy_loss(logp, old, torch.tensor([[-1.0]]), torch.ones(1, 1), cliprange=0.2)
    close(loss, 0.8)
    close(stats["clipfrac"], 1.0)


def test_value_loss_hand_values():
    # c = 0.2, V_old = 1.0 both tokens.
    # Token 0: V = 1.5, R = 2.0 -> V_clip = 1.2; (1.5-2)^2 = 0.25, (1.2-2)^2 = 0.64 -> 0.64 (clipped term wins).
    # Token 1: V = 0.5, R = 2.0 -> V_clip = 0.8; (0.5-2)^2 = 2.25, (0.8-2)^2 = 1.44 -> 2.25 (unclipped).
    # Token 2: pad. loss = 0.5 * (0.64 + 2.25) / 2 = 0.7225; clipfrac = 0.5.
    values = torch.tensor([[1.5, 0.5, 50.0]])
    old = torch.tensor([[1.0, 1.0, 0.0]])
    returns = torch.tensor([[2.0, 2.0, -50.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss, clipfrac = value_loss(values, old, returns, mask, cliprange_value=0.2)
    close(loss, 0.7225)
    close(clipfrac, 0.5)


def test_value_loss_clips_a_drop_below_the_old_value():
    # V fell from V_old = 1.0 to 0.5 with c = 0.2 and R = 0: V_clip = 1.0 - 0.2 = 0.8; (0.5 - 0)^2 = 0.25,
    # (0.8 - 0)^2 = 0.64 -> the clipped term wins: loss 0.5 * 0.64 = 0.32, clipfrac 1.
    loss, clipfrac = value_loss(
        torch.tensor([[0.5]]), torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.ones(1, 1), 0.2
    )
    close(loss, 0.32)
    close(clipfrac, 1.0)


def test_value_loss_no_clip_when_inside_range():
    # V = 1.1, V_old = 1.0, R = 0: V_clip = V -> 0.5 * 1.21 = 0.605.
    loss, clipfrac = value_loss(
        torch.tensor([[1.1]]), torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.ones(1, 1), 0.2
    )
    close(loss, 0.605)
    close(clipfrac, 0.0)


# --- KL controllers --------------------------------------------------------------------------------------------------


def test_adaptive_kl_controller_update():
    # error = clip(12/6 - 1, -0.2, 0.2) = 0.2; beta = 0.2 * (1 + 0.2 * 256 / 10000) = 0.2 * 1.00512 = 0.201024.
    ctl = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    ctl.update(12.0, 256)
    close(ctl.value, 0.201024, atol=1e-9)


def test_adaptive_kl_controller_at_target_and_unclipped():
    ctl = AdaptiveKLController(0.2, 6.0, 10000)
    ctl.update(6.0, 256)
    assert ctl.value == 0.2
    # error = 6.6/6 - 1 = 0.1 (inside the clip): 0.2 * (1 + 0.1 * 0.0256) = 0.200512.
    ctl.update(torch.tensor(6.6), 256)
    close(ctl.value, 0.200512, atol=1e-9)


def test_adaptive_kl_controller_clips_error():
    up = AdaptiveKLController(0.2, 6.0, 10000)
    up.update(100.0, 256)  # 100/6 - 1 = 15.7 -> clipped to 0.2
    close(up.value, 0.201024, atol=1e-9)
    down = AdaptiveKLController(0.2, 6.0, 10000)
    down.update(0.0, 256)  # 0/6 - 1 = -1 -> clipped to -0.2: 0.2 * (1 - 0.00512) = 0.198976
    close(down.value, 0.198976, atol=1e-9)


def test_kl_controller_state_dict_round_trip():
    ctl = AdaptiveKLController(0.2, 6.0, 10000)
    ctl.update(12.0, 256)
    fresh = AdaptiveKLController(1.0, 1.0, 1)
    fresh.load_state_dict(ctl.state_dict())
    assert fresh.value == ctl.value and fresh.target == 6.0 and fresh.horizon == 10000
    fresh.update(12.0, 256)
    ctl.update(12.0, 256)
    assert fresh.value == ctl.value

    # A fixed controller's state (only "value"), e.g. resuming with target_kl newly set: keeps the configured
    # target and horizon.
    adaptive = AdaptiveKLController(0.2, 6.0, 10000)
    adaptive.load_state_dict(FixedKLController(0.3).state_dict())
    assert (adaptive.value, adaptive.target, adaptive.horizon) == (0.3, 6.0, 10000)

    fixed = FixedKLController(0.05)
    other = FixedKLController(0.0)
    other.load_state_dict(fixed.state_dict())
    assert other.value == 0.05


def test_fixed_kl_controller_and_factory():
    fixed = FixedKLController(0.05)
    fixed.update(100.0, 256)
    assert fixed.value == 0.05
    assert isinstance(make_kl_controller(0.05, None, 10000), FixedKLController)
    adaptive = make_kl_controller(0.05, 6.0, 10000)
    assert isinstance(adaptive, AdaptiveKLController)
    assert adaptive.value == 0.05 and adaptive.target == 6.0 and adaptive.horizon == 10000


def test_chunked_logprobs_forward_and_gradient_match_plain_log_softmax(monkeypatch):
    import rlhf_recipes.ppo.core as core_module

    monkeypatch.setattr(core_module, "LOGSOFTMAX_CHUNK_ELEMENTS", 14)  # 2 positions of V=7 per chunk: 5 chunks
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 5, 7, generator=g) * 3).requires_grad_()
    tokens = torch.randint(0, 7, (2, 5), generator=g)
    weights = torch.randn(2, 5, generator=g)
    tau = 0.7
    plain = torch.log_softmax(logits / tau, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    (expected_grad,) = torch.autograd.grad((plain * weights).sum(), logits)
    ours = logprobs_from_logits(logits, tokens, temperature=tau)
    torch.testing.assert_close(ours, plain.detach())
    (grad,) = torch.autograd.grad((ours * weights).sum(), logits)
    torch.testing.assert_close(grad, expected_grad)
    # bf16 logits: the gradient comes back in bf16, the log-probs in fp32
    bf16 = logits.detach().bfloat16().requires_grad_()
    out = logprobs_from_logits(bf16, tokens, temperature=tau)
    (grad_bf16,) = torch.autograd.grad((out * weights).sum(), bf16)
    assert out.dtype == torch.float32 and grad_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(grad_bf16.float(), expected_grad, atol=2e-2, rtol=2e-2)
    entropy = entropy_from_logits(logits.detach(), temperature=tau)
    p = torch.softmax(logits.detach() / tau, -1)
    torch.testing.assert_close(entropy, -(p * torch.log(p)).sum(-1))


class _Float32Temporaries(TorchDispatchMode):
    """Records the rows of every float32 ``[rows, V]`` tensor that any op (forward or backward) creates, and
    separately the rows of the upcasts (bf16 -> fp32 copies) among them."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.rows: list[int] = []
        self.upcast_rows: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if (
            isinstance(out, torch.Tensor)
            and out.dtype == torch.float32
            and out.dim() >= 2
            and out.shape[-1] == self.vocab
        ):
            self.rows.append(out.numel() // self.vocab)
            if func is torch.ops.aten._to_copy.default:
                self.upcast_rows.append(out.numel() // self.vocab)
        return out


@pytest.mark.parametrize(
    ("chunk_elements", "rows_per_chunk"),
    [(48, 3), (8, 1), (2**24, 10)],  # 48 // 16 = 3 rows: 3 + 3 + 3 + 1; a budget under V: one row; all 10 rows at once
)
def test_chunked_logprobs_and_entropy_hold_one_chunk_in_float32(monkeypatch, chunk_elements, rows_per_chunk):
    # The memory claim of logprobs_from_logits / entropy_from_logits: bf16 [B, T, V] logits are upcast one chunk of
    # LOGSOFTMAX_CHUNK_ELEMENTS // V positions at a time, in the forward and in the backward, and each chunk uses the
    # whole budget (a position-at-a-time loop would be a kernel launch per token), each position once per pass. The
    # numbers match a plain fp32 log_softmax of the same logits, also when the chunk size does not divide B * T = 10.
    import rlhf_recipes.ppo.core as core_module

    monkeypatch.setattr(core_module, "LOGSOFTMAX_CHUNK_ELEMENTS", chunk_elements)
    vocab, tau = 16, 0.7
    g = torch.Generator().manual_seed(2)
    logits = (torch.randn(2, 5, vocab, generator=g) * 3).bfloat16().requires_grad_()
    tokens = torch.randint(0, vocab, (2, 5), generator=g)
    weights = torch.randn(2, 5, generator=g)

    with _Float32Temporaries(vocab) as forward:
        out = logprobs_from_logits(logits, tokens, temperature=tau)
    with _Float32Temporaries(vocab) as backward:
        (grad,) = torch.autograd.grad((out * weights).sum(), logits)
    with _Float32Temporaries(vocab) as entropy_pass, torch.no_grad():
        entropy = entropy_from_logits(logits, temperature=tau)
    for recorded in (forward, backward, entropy_pass):
        assert max(recorded.rows) == rows_per_chunk
        assert sum(recorded.upcast_rows) == 10  # each position upcast once per pass: the chunks do not overlap

    z = logits.detach().float().requires_grad_()
    plain = torch.log_softmax(z / tau, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    (expected_grad,) = torch.autograd.grad((plain * weights).sum(), z)
    torch.testing.assert_close(out, plain.detach())
    assert grad.dtype == torch.bfloat16
    torch.testing.assert_close(grad.float(), expected_grad.bfloat16().float())
    p = torch.softmax(z.detach() / tau, dim=-1)
    torch.testing.assert_close(entropy, -(p * torch.log(p)).sum(-1))


def test_logprobs_and_entropy_are_float32_whatever_the_default_dtype():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # probabilities [0.25, 0.75]
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        logprobs = logprobs_from_logits(logits, torch.tensor([[1]]))
        entropy = entropy_from_logits(logits)
    finally:
        torch.set_default_dtype(default)
    assert logprobs.dtype == torch.float32 and entropy.dtype == torch.float32
    close(logprobs, [[math.log(0.75)]])
    close(entropy, [[0.562335]])


def test_results_stay_on_the_input_device():
    # On the meta device (shapes only, no data) a tensor made on the default device instead of the input's raises or
    # comes back on the CPU, as it would on a GPU.
    meta = torch.device("meta")
    logits = torch.empty(2, 3, 5, device=meta, requires_grad=True)
    tokens = torch.empty(2, 3, dtype=torch.long, device=meta)
    logprobs = logprobs_from_logits(logits, tokens)
    (grad,) = torch.autograd.grad(logprobs.sum(), logits)
    assert logprobs.device == meta and grad.device == meta
    assert entropy_from_logits(logits.detach()).device == meta
    responses = torch.empty(2, 3, dtype=torch.long, device=meta)
    assert first_true_indices(responses == 2).device == meta
    assert truncate_after_stop_token(responses, 2, 0).device == meta
    mask = torch.empty(2, 3, dtype=torch.bool, device=meta)
    rewards, non_score = per_token_rewards(torch.empty(2, device=meta), torch.empty(2, 3, device=meta), 0.1, mask)
    assert rewards.device == meta and non_score.device == meta
