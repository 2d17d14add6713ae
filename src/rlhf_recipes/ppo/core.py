"""The pure math of PPO for RLHF.

Small, stateless functions in the spirit of CleanRL's ``ppo.py``, readable top to bottom. Nothing here knows
about models, tokenizers or optimisers: everything takes and returns tensors.

Conventions
-----------
* Per-token tensors have shape ``[batch, response_len]`` (written ``[B, T]``) and cover only the *response*
  tokens, i.e. the tokens the policy generated after the prompt.
* ``mask`` is a boolean (or 0/1) tensor of the same shape, True at real response tokens. Padding may appear only
  *after* the response (right padding), so the last real token of row ``i`` is at index ``mask[i].sum() - 1``.

References
----------
* [InstructGPT] Ouyang et al. 2022, "Training language models to follow instructions with human feedback", eq. 2:
  ``objective(phi) = E[r_theta(x, y) - beta * log(pi_RL(y|x) / pi_SFT(y|x))] + gamma * E[log pi_RL(x)]``.
* [Ziegler] Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences", sec. 2.2: the adaptive KL
  controller ``e_t = clip(KL_t / KL_target - 1, -0.2, 0.2)``, ``beta_{t+1} = beta_t (1 + K_beta e_t)``.
* [GAE] Schulman et al. 2015, "High-Dimensional Continuous Control Using Generalized Advantage Estimation".
* [PPO] Schulman et al. 2017, "Proximal Policy Optimization Algorithms", eq. 7 (clipped surrogate objective).
* [KL-approx] Schulman 2020, "Approximating KL Divergence", http://joschu.net/blog/kl-approx.html (k1, k3).
"""

from __future__ import annotations

import torch

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "compute_gae",
    "entropy_from_logits",
    "first_true_indices",
    "kl_estimate",
    "logprobs_from_logits",
    "make_kl_controller",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "per_token_rewards",
    "short_response_penalty",
    "policy_loss",
    "truncate_after_stop_token",
    "value_loss",
]

WHITEN_EPS = 1e-8


# ---------------------------------------------------------------------------------------------------------------------
# Masked statistics
# ---------------------------------------------------------------------------------------------------------------------


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is True.

    ``mean_m(x) = sum_t m_t x_t / sum_t m_t``. With ``dim=None`` the mean is over all elements (a scalar),
    otherwise over ``dim``. Values at masked-out positions never enter the result (even NaN/inf).
    """
    mask = mask.bool()
    x = torch.where(mask, x, torch.zeros_like(x))
    count = mask.sum() if dim is None else mask.sum(dim)
    total = x.sum() if dim is None else x.sum(dim)
    return total / count


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Population variance (no Bessel correction) of ``x`` over the masked positions.

    ``var_m(x) = mean_m((x - mean_m(x))^2)``. Returns a scalar.
    """
    mean = masked_mean(x, mask)
    return masked_mean((x - mean) ** 2, mask)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Whiten ``x`` using statistics computed only over the masked positions.

    ``x_hat = (x - mu) / sqrt(sigma^2 + 1e-8)`` with ``mu, sigma^2`` the masked mean and population variance.
    With ``shift_mean=False`` the mean is added back (``x_hat + mu``): the scale is normalised but not the
    location, as is customary for rewards. Masked-out positions of the output are 0.
    """
    mask = mask.bool()
    mean = masked_mean(x, mask)
    var = masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + WHITEN_EPS)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask, whitened, torch.zeros_like(whitened))


# ---------------------------------------------------------------------------------------------------------------------
# Log-probabilities and entropy from logits
# ---------------------------------------------------------------------------------------------------------------------


# Positions per chunk of the log-softmax: 2^24 fp32 values (64 MiB) at a time, ~330 positions of GPT-2's vocabulary.
LOGSOFTMAX_CHUNK_ELEMENTS = 2**24


def _chunks(num_positions: int, vocab: int) -> range:
    step = max(1, LOGSOFTMAX_CHUNK_ELEMENTS // max(1, vocab))
    return range(0, num_positions, step)


class _ChunkedLogProbs(torch.autograd.Function):
    """``log softmax(z / tau)[token]`` over ``[N, V]`` logits, chunk by chunk in float32.

    Autograd through a plain ``log_softmax(z.float() / tau)`` keeps an fp32 ``[N, V]`` copy alive for the backward.
    Here the forward keeps only the input logits (in their own dtype) and the ``[N]`` log-normalisers; the backward
    recomputes ``softmax`` chunk by chunk: ``d/dz = (onehot(token) - softmax(z / tau)) / tau * grad``.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
        out = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        lse = torch.empty_like(out)
        step = _chunks(logits.shape[0], logits.shape[-1]).step
        for start in range(0, logits.shape[0], step):
            rows = slice(start, start + step)
            z = logits[rows].float() / temperature
            lse[rows] = torch.logsumexp(z, dim=-1)
            out[rows] = z.gather(-1, tokens[rows, None]).squeeze(-1) - lse[rows]
        ctx.save_for_backward(logits, tokens, lse)
        ctx.temperature = temperature
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, tokens, lse = ctx.saved_tensors
        temperature = ctx.temperature
        grad_logits = torch.empty_like(logits)
        step = _chunks(logits.shape[0], logits.shape[-1]).step
        for start in range(0, logits.shape[0], step):
            rows = slice(start, start + step)
            z = logits[rows].float() / temperature
            g = grad[rows].float() / temperature
            chunk = -torch.exp(z - lse[rows, None]) * g[:, None]
            chunk.scatter_add_(-1, tokens[rows, None], g[:, None])
            grad_logits[rows] = chunk.to(logits.dtype)
        return grad_logits, None, None


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log pi(a_t | s_t)``: the log-softmax of ``logits / temperature`` gathered at ``tokens``, in float32.

    ``logits`` is ``[B, T, V]`` (any float dtype) and ``tokens`` is ``[B, T]``; returns float32 ``[B, T]``. Computed as
    ``z[token] - logsumexp(z)`` with ``z = logits.float() / temperature`` a chunk of positions at a time, so neither
    the forward nor the backward ever holds ``[B, T, V]`` in float32 at once (bf16 logits stay bf16 in memory; each
    chunk is upcast before the log-softmax, so the precision is that of a float32 log-softmax).
    """
    batch, length, vocab = logits.shape
    flat = _ChunkedLogProbs.apply(logits.reshape(batch * length, vocab), tokens.long().reshape(-1), float(temperature))
    return flat.view(batch, length)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-token entropy ``H(pi(.|s_t)) = -sum_a pi(a) log pi(a)`` of the categorical given by ``logits / temperature``.

    Uses ``H = logsumexp(z) - sum_a softmax(z)_a z_a``, which is exact and avoids ``0 * log 0``; float32, a chunk of
    positions at a time. Differentiable (the entropy bonus needs it); call it under ``torch.no_grad()`` when it is
    only a statistic, so that no chunk's softmax is kept for a backward. ``logits`` is ``[B, T, V]``; returns
    ``[B, T]``.
    """
    batch, length, vocab = logits.shape
    flat = logits.reshape(batch * length, vocab)
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=logits.device)
    step = _chunks(flat.shape[0], vocab).step
    for start in range(0, flat.shape[0], step):
        z = flat[start: start + step].float() / temperature
        out[start: start + z.shape[0]] = torch.logsumexp(z, dim=-1) - (torch.softmax(z, dim=-1) * z).sum(dim=-1)
    return out.view(batch, length)


# ---------------------------------------------------------------------------------------------------------------------
# Response post-processing
# ---------------------------------------------------------------------------------------------------------------------


def first_true_indices(bools: torch.Tensor, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """Index of the first True in each row of ``bools`` (last dim); the row length if a row has no True."""
    row_len = bools.size(-1)
    # A True at t maps to t, a False to row_len + t: the row minimum is the first True, or row_len if there is none.
    positions = torch.arange(row_len, dtype=dtype, device=bools.device)
    candidates = row_len * (~bools.bool()).to(dtype) + positions
    return candidates.min(dim=-1).values


def truncate_after_stop_token(responses: torch.Tensor, stop_token_id: int, pad_token_id: int) -> torch.Tensor:
    """Keep each response up to and including its first ``stop_token_id``; replace everything after with pad.

    ``[a, b, EOS, c] -> [a, b, EOS, PAD]``. Rows without a stop token are returned unchanged. Returns a new tensor.
    """
    stop_idx = first_true_indices(responses == stop_token_id).unsqueeze(-1)  # [B, 1]
    positions = torch.arange(responses.size(-1), device=responses.device).view(1, -1)  # [1, T]
    return responses.masked_fill(positions > stop_idx, pad_token_id)


# ---------------------------------------------------------------------------------------------------------------------
# KL penalty and per-token rewards (InstructGPT eq. 2)
# ---------------------------------------------------------------------------------------------------------------------


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of ``KL(pi_RL || pi_SFT)`` from samples ``y_t ~ pi_RL``.

    * ``"k1"``: ``log pi_RL(y_t) - log pi_SFT(y_t)``, the term inside InstructGPT eq. 2. Unbiased, high variance,
      can be negative per token.
    * ``"k3"``: ``(r - 1) - log r`` with ``r = pi_SFT(y_t) / pi_RL(y_t)`` [KL-approx]. Unbiased and always >= 0.
    """
    if estimator == "k1":
        return logprobs - ref_logprobs
    if estimator == "k3":
        log_r = ref_logprobs - logprobs
        return torch.expm1(log_r) - log_r  # (r - 1) - log r, with expm1 for precision near r = 1
    raise ValueError(f"Unknown KL estimator {estimator!r}; expected 'k1' or 'k3'.")


def per_token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, kl_coef: float | torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense rewards for PPO from the sequence score and the per-token KL (InstructGPT eq. 2).

    ``R_t = -beta * KL_t`` at every real token, plus the reward-model score ``r_theta(x, y)`` added once at the last
    real token of each sequence; 0 at pads. Hence ``sum_t R_t = r_theta(x, y) - beta * sum_t KL_t``.

    Args:
        scores: ``[B]`` reward-model scores ``r_theta(x, y)``.
        kl: ``[B, T]`` per-token KL estimates (see :func:`kl_estimate`).
        kl_coef: ``beta``.
        mask: ``[B, T]`` real-token mask (right padding only).

    Returns:
        ``(rewards, non_score_rewards)``, both ``[B, T]``; ``non_score_rewards = -beta * KL`` (0 at pads).
        A row with no real token at all gets all-zero rewards (its score has nowhere to go).
    """
    mask = mask.bool()
    non_score_rewards = torch.where(mask, -kl_coef * kl, torch.zeros_like(kl))
    lengths = mask.sum(dim=-1)  # [B]
    last_idx = (lengths - 1).clamp(min=0)
    batch_idx = torch.arange(kl.size(0), device=kl.device)
    score_at_end = torch.where(lengths > 0, scores.to(kl.dtype), torch.zeros_like(scores, dtype=kl.dtype))
    rewards = non_score_rewards.clone()
    rewards[batch_idx, last_idx] += score_at_end
    return rewards, non_score_rewards


def short_response_penalty(lengths: torch.Tensor, min_length: int, coef: float) -> torch.Tensor:
    """``coef * max(0, min_length - L) / min_length``: what a response of ``L`` tokens loses from its score.

    Zero at or above ``min_length``, ``coef`` for an empty response. A per-token KL penalty (longer responses pay
    more) and a missing-EOS penalty both push PPO towards short responses; this counters the drift without rewarding
    length beyond ``min_length``. ``lengths`` is ``[B]``; returns ``[B]`` (float).
    """
    if min_length <= 0:
        return torch.zeros_like(lengths, dtype=torch.float32)
    return coef * (min_length - lengths.float()).clamp(min=0) / min_length


# ---------------------------------------------------------------------------------------------------------------------
# Generalised Advantage Estimation
# ---------------------------------------------------------------------------------------------------------------------


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE(gamma, lambda) advantages and value targets over the response tokens [GAE, eqs. 11-16].

    ``delta_t = R_t + gamma * V_{t+1} - V_t`` and ``A_t = delta_t + gamma * lambda * A_{t+1}``, computed backwards in
    time. The episode ends at the last real token, so the bootstrap value ``V_{T_i}`` after it is 0 (as is
    ``A_{T_i}``). Returns (value targets) are ``A_t + V_t``. Pads get advantage 0 and return 0. Vectorised over the
    batch; the loop runs over time only.

    Args:
        rewards, values, mask: ``[B, T]``.

    Returns:
        ``(advantages, returns)``, both ``[B, T]``.
    """
    mask = mask.bool()
    zeros = torch.zeros_like(values)
    rewards = torch.where(mask, rewards, zeros)
    values = torch.where(mask, values, zeros)
    maskf = mask.to(values.dtype)

    response_len = rewards.size(-1)
    last_gae = torch.zeros_like(values[:, 0])
    advantages_reversed = []
    for t in reversed(range(response_len)):
        next_values = values[:, t + 1] if t + 1 < response_len else torch.zeros_like(last_gae)  # 0 at pads/end
        delta = rewards[:, t] + gamma * next_values - values[:, t]
        last_gae = (delta + gamma * lam * last_gae) * maskf[:, t]  # resets to 0 at pads
        advantages_reversed.append(last_gae)
    advantages = torch.stack(advantages_reversed[::-1], dim=1)
    returns = torch.where(mask, advantages + values, zeros)
    return advantages, returns


# ---------------------------------------------------------------------------------------------------------------------
# PPO losses
# ---------------------------------------------------------------------------------------------------------------------


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate loss [PPO, eq. 7], negated for minimisation.

    ``rho_t = exp(log pi_theta(a_t) - log pi_theta_old(a_t))`` and
    ``L = mean_m(max(-A_t rho_t, -A_t clip(rho_t, 1 - eps, 1 + eps)))``.

    Returns:
        ``(loss, stats)``; ``stats`` holds detached masked means: ``"approxkl"`` = ``0.5 * mean(log rho^2)``,
        ``"clipfrac"`` = fraction of tokens where the clipped term is active, ``"ratio"`` = mean ``rho``.
    """
    logratio = logprobs - old_logprobs
    ratio = torch.exp(logratio)
    pg_losses = -advantages * ratio
    pg_losses_clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(pg_losses, pg_losses_clipped), mask)
    with torch.no_grad():
        stats = {
            "approxkl": 0.5 * masked_mean(logratio**2, mask),
            "clipfrac": masked_mean((pg_losses_clipped > pg_losses).to(logprobs.dtype), mask),
            "ratio": masked_mean(ratio, mask),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss, as in the OpenAI PPO implementations used by Ziegler et al. and InstructGPT.

    ``V_clip = V_old + clip(V - V_old, -c, c)`` and ``L_V = 0.5 * mean_m(max((V - R)^2, (V_clip - R)^2))``.

    Returns:
        ``(loss, clipfrac)``; ``clipfrac`` (detached) is the masked fraction of tokens where the clipped term wins.
    """
    values_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    vf_losses = (values - returns) ** 2
    vf_losses_clipped = (values_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(vf_losses, vf_losses_clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((vf_losses_clipped > vf_losses).to(values.dtype), mask)
    return loss, clipfrac


# ---------------------------------------------------------------------------------------------------------------------
# KL coefficient controllers (Ziegler et al. 2019, sec. 2.2)
# ---------------------------------------------------------------------------------------------------------------------


class AdaptiveKLController:
    """Adaptive KL coefficient ``beta`` [Ziegler, sec. 2.2].

    ``e_t = clip(KL_t / KL_target - 1, -0.2, 0.2)`` and ``beta_{t+1} = beta_t * (1 + K_beta * e_t)`` with
    ``K_beta = n_steps / horizon`` (``n_steps``: episodes in the batch that produced ``KL_t``).
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float | torch.Tensor, n_steps: int) -> None:
        """Move ``beta`` towards keeping the observed KL at ``target``."""
        proportional_error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])
        self.target = float(state.get("target", self.target))
        self.horizon = int(state.get("horizon", self.horizon))


class FixedKLController:
    """Constant KL coefficient ``beta``; same interface as :class:`AdaptiveKLController`, ``update`` is a no-op."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float | torch.Tensor, n_steps: int) -> None:
        """No-op: ``beta`` stays fixed."""

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


def make_kl_controller(
    kl_coef: float, target_kl: float | None, kl_horizon: int
) -> AdaptiveKLController | FixedKLController:
    """An :class:`AdaptiveKLController` when ``target_kl`` is set, a :class:`FixedKLController` otherwise."""
    if target_kl is not None:
        return AdaptiveKLController(kl_coef, target_kl, kl_horizon)
    return FixedKLController(kl_coef)
