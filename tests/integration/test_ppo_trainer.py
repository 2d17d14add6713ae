"""PPOTrainer against independently computed numbers: rollout, scoring, rewards, losses, LoRA reference, NaN, resume.

The math tests use tiny random GPT-2s (1 layer, 32 wide, fp32) with the demo tokenizer; their weights are drawn with a
large `initializer_range` so that the next-token distributions are peaked and a misplaced index or a missing
temperature shows up in the log-probs. Every expected number is recomputed here one sequence at a time, on the
*unpadded* prompt + response, with plain torch (no `core` helpers), so padding, position ids and slicing are checked
rather than reused.
"""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_recipe
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    TrainerCallback,
)
from transformers.generation.utils import GenerateDecoderOnlyOutput
from trl import ModelConfig

from rlhf_recipes.data import load_raw_dataset, tokenize_prompts, tokenize_texts
from rlhf_recipes.models import load_model, load_tokenizer
from rlhf_recipes.ppo import PPOConfig, PPOTrainer, core
from rlhf_recipes.ppo.trainer import NonFiniteError

TEMPERATURE = 0.7
TRL_METRICS = (
    "objective/kl", "objective/entropy", "objective/non_score_reward", "objective/rlhf_reward", "objective/scores",
    "policy/approxkl_avg", "policy/clipfrac_avg", "loss/policy_avg", "loss/value_avg", "val/clipfrac_avg",
    "policy/entropy_avg", "val/ratio", "val/num_eos_tokens", "lr", "episode", "loss/ptx", "objective/kl_coef",
)


# ---------------------------------------------------------------------------------------------------------------------
# Fixtures and builders
# ---------------------------------------------------------------------------------------------------------------------
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tok(demo_dir):
    return load_tokenizer(str(demo_dir / "base"), padding_side="left")


@pytest.fixture(scope="module")
def prompts(demo_dir, tok):
    return tokenize_prompts(load_raw_dataset(str(demo_dir / "data/prompts"))["train"].select(range(64)), tok)


@pytest.fixture(scope="module")
def ptx(demo_dir, tok):
    return tokenize_texts(str(demo_dir / "data/ptx/train.jsonl"), tok, 24)


def tiny_config(tok, **kw) -> GPT2Config:
    return GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=64, vocab_size=len(tok), initializer_range=0.3,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id,
                      **kw)


def tiny_lm(tok, seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(tiny_config(tok)).float().eval()


def tiny_scalar(tok, seed: int) -> GPT2ForSequenceClassification:
    torch.manual_seed(seed)
    return GPT2ForSequenceClassification(tiny_config(tok, num_labels=1)).float().eval()


def make_trainer(tok, prompts, out, *, policy=None, ref="separate", rm=None, vm=None, ptx_dataset=None, **overrides):
    settings = dict(
        output_dir=str(out), per_device_train_batch_size=4, gradient_accumulation_steps=1, num_mini_batches=1,
        num_ppo_epochs=1, response_length=6, temperature=TEMPERATURE, kl_coef=0.05, missing_eos_penalty=None,
        total_episodes=4, learning_rate=1e-3, seed=0, report_to="none", save_strategy="no", logging_steps=1,
        use_cpu=True, disable_tqdm=True, num_sample_generations=0, local_rollout_forward_batch_size=64,
    )
    if ptx_dataset is not None:  # the config only names it; the trainer takes the tokenized rows
        settings["ptx_dataset"] = "data/ptx/train.jsonl"
    settings.update(overrides)
    policy = policy if policy is not None else tiny_lm(tok, 1)
    if ref == "separate":
        ref = tiny_lm(tok, 2)
    return PPOTrainer(args=PPOConfig(**settings), processing_class=tok, model=policy, ref_model=ref,
                      reward_model=rm if rm is not None else tiny_scalar(tok, 3),
                      value_model=vm if vm is not None else tiny_scalar(tok, 4), train_dataset=prompts,
                      ptx_dataset=ptx_dataset)


def fix_generation(monkeypatch, trainer, responses: torch.Tensor) -> None:
    """Make the policy 'sample' exactly `responses` (raw, before the trainer's truncation), with the raw logits
    `generate(output_logits=True)` would return for them."""
    policy = trainer._unwrapped().policy

    @torch.no_grad()
    def generate(input_ids, attention_mask=None, generation_config=None, **_):
        sequences = torch.cat([input_ids, responses[: input_ids.shape[0]].to(input_ids.device)], dim=1)
        mask = torch.cat([attention_mask, torch.ones_like(sequences[:, input_ids.shape[1]:])], dim=1)
        logits = policy(input_ids=sequences, attention_mask=mask,
                        position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits[:, input_ids.shape[1] - 1: -1]
        return GenerateDecoderOnlyOutput(sequences=sequences, logits=tuple(logits.unbind(1)))

    monkeypatch.setattr(policy, "generate", generate)


def force_eos(monkeypatch, trainer, eos_at: list[int | None]) -> None:
    """Sample for real, then overwrite response position `eos_at[i]` of row i with EOS (None: leave the row).

    The logits at that position are the ones the EOS was drawn from, so the rollout's log-prob stays exact."""
    policy = trainer._unwrapped().policy
    real_generate = policy.generate

    def generate(input_ids, **kwargs):
        out = real_generate(input_ids=input_ids, **kwargs)
        for row, at in enumerate(eos_at[: out.sequences.shape[0]]):
            if at is not None:
                out.sequences[row, input_ids.shape[1] + at] = trainer.stop_token_id
        return out

    monkeypatch.setattr(policy, "generate", generate)


# ---------------------------------------------------------------------------------------------------------------------
# Independent per-sequence recomputation (unpadded, plain torch)
# ---------------------------------------------------------------------------------------------------------------------
def unpadded(query: torch.Tensor, response: torch.Tensor, pad: int) -> tuple[torch.Tensor, int, int]:
    q = query[query != pad]
    n = int((response != pad).sum())
    assert bool((response[n:] == pad).all()) and bool((response[:n] != pad).all()), "response is not right-padded"
    return torch.cat([q, response[:n]]), len(q), n


def logits_at_response(model, ids, q_len, n) -> torch.Tensor:
    return model(input_ids=ids[None]).logits[0, q_len - 1: q_len - 1 + n].float() / TEMPERATURE


def logprobs_of(model, ids, q_len, n) -> torch.Tensor:
    logp = torch.log_softmax(logits_at_response(model, ids, q_len, n), dim=-1)
    return logp[torch.arange(n), ids[q_len:]]


def values_of(value_model, ids, q_len, n) -> torch.Tensor:
    hidden = value_model.transformer(input_ids=ids[None]).last_hidden_state
    return value_model.score(hidden)[0, q_len - 1: q_len - 1 + n, 0].float()


def score_of(reward_model, ids) -> torch.Tensor:
    return reward_model(input_ids=ids[None]).logits[0, -1].float() + getattr(reward_model, "reward_bias", 0.0)


@torch.no_grad()
def recompute(exp, tok, policy, ref, rm, vm, beta, gamma=1.0, lam=0.95, penalty=0.0):
    """Per-row lists of what make_experience should have produced, from first principles."""
    rows = []
    for query, response in zip(exp["queries"], exp["responses"]):
        ids, q_len, n = unpadded(query, response, tok.pad_token_id)
        lp, ref_lp = logprobs_of(policy, ids, q_len, n), logprobs_of(ref, ids, q_len, n)
        logits = logits_at_response(policy, ids, q_len, n)
        entropy = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)
        values = values_of(vm, ids, q_len, n)
        raw_score = score_of(rm, ids)
        score = raw_score - (penalty if not bool((ids[q_len:] == tok.eos_token_id).any()) else 0.0)
        kl = lp - ref_lp
        rewards = -beta * kl
        rewards[-1] += score
        advantages, last = torch.zeros(n), 0.0
        for t in reversed(range(n)):
            next_value = values[t + 1] if t + 1 < n else 0.0
            last = rewards[t] + gamma * next_value - values[t] + gamma * lam * last
            advantages[t] = last
        rows.append({"n": n, "lp": lp, "ref_lp": ref_lp, "kl": kl, "entropy": entropy, "values": values,
                     "raw_score": raw_score, "score": score, "rewards": rewards, "advantages": advantages,
                     "returns": advantages + values})
    return rows


def cat(rows, key) -> torch.Tensor:
    return torch.cat([r[key].reshape(-1) for r in rows])


def assert_close(actual, expected, atol=1e-5, rtol=1e-5):
    torch.testing.assert_close(torch.as_tensor(actual).float(), torch.as_tensor(expected).float(), atol=atol,
                               rtol=rtol)


# ---------------------------------------------------------------------------------------------------------------------
# Rollout, scoring and rewards
# ---------------------------------------------------------------------------------------------------------------------
def test_first_minibatch_before_any_update_has_ratio_one(tok, prompts, tmp_path, monkeypatch):
    trainer = make_trainer(tok, prompts, tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                           num_mini_batches=2, response_length=8, total_episodes=8)
    trainer._setup(1)
    force_eos(monkeypatch, trainer, [2, None, 5, 0, None, 3, 1, None])
    exp = trainer.make_experience(trainer._prompt_batch(0))
    assert exp["mask"].sum(1).tolist()[:4] == [3, 8, 6, 1]  # pads are there, so the slicing is exercised
    keys = ("query_responses", "attention_mask", "position_ids", "responses", "mask", "logprobs", "values",
            "advantages", "returns", "queries")
    micro = {k: exp[k][torch.tensor([3, 0])] for k in keys}  # another batch composition than the rollout's
    out = trainer.ppo_step(micro, 0)
    assert out["ratio"].item() == pytest.approx(1.0, abs=1e-5)
    assert out["approxkl"].item() == pytest.approx(0.0, abs=1e-5)
    assert out["clipfrac"].item() == pytest.approx(0.0, abs=1e-5)
    assert out["vf_clipfrac"].item() == pytest.approx(0.0, abs=1e-5)
    assert out["ratio_var"].item() == pytest.approx(0.0, abs=1e-5)
    # ratio 1 makes the clipped surrogate -mean(A) over the micro-batch's real tokens
    expected_pg = -exp["advantages"][[3, 0]][exp["mask"][[3, 0]]].mean()
    assert out["pg_loss"].item() == pytest.approx(expected_pg.item(), abs=1e-5)


def test_policy_equal_to_reference_gives_zero_kl_and_zero_non_score_reward(tok, prompts, tmp_path):
    policy = tiny_lm(tok, 1)
    trainer = make_trainer(tok, prompts, tmp_path, policy=policy, ref=copy.deepcopy(policy), kl_coef=0.3)
    trainer._setup(1)
    for estimator in ("k1", "k3"):
        trainer.args.kl_estimator = estimator
        exp = trainer.make_experience(trainer._prompt_batch(0))
        # pi_RL's log-probs come from the sampling logits (KV cache), pi_SFT's from a full forward: equal up to
        # float rounding, not bit for bit
        assert exp["mask"].any()
        assert_close(exp["logprobs"][exp["mask"]], exp["ref_logprobs"][exp["mask"]], atol=1e-5)
        assert_close(exp["kl"], torch.zeros_like(exp["kl"]), atol=1e-5)
        assert_close(exp["non_score_rewards"], torch.zeros_like(exp["non_score_rewards"]), atol=1e-5)
        assert_close(exp["rewards"].sum(1), exp["scores"], atol=1e-5)  # the score alone


def test_experience_matches_per_sequence_recomputation_and_is_zero_at_pads(tok, prompts, tmp_path, monkeypatch):
    beta = 0.2
    trainer = make_trainer(tok, prompts, tmp_path, kl_coef=beta, response_length=7)
    policy, ref, rm, vm = trainer.model.policy, trainer.ref_model, trainer.reward_model, trainer.model.value_model
    trainer._setup(1)
    force_eos(monkeypatch, trainer, [0, 3, None, 5])
    exp = trainer.make_experience(trainer._prompt_batch(0))
    mask = exp["mask"]
    assert mask.sum(1).tolist() == [1, 4, 7, 6]
    rows = recompute(exp, tok, policy, ref, rm, vm, beta)

    for key, ours in (("lp", "logprobs"), ("ref_lp", "ref_logprobs"), ("kl", "kl"), ("values", "values"),
                      ("rewards", "rewards"), ("returns", "returns")):
        assert_close(exp[ours][mask], cat(rows, key), atol=2e-5)
    assert_close(exp["scores"], torch.stack([r["score"] for r in rows]))
    # InstructGPT eq. 2 per sequence: sum_t R_t = r(x, y) - beta * sum_t KL_t
    expected_sum = torch.stack([r["score"] - beta * r["kl"].sum() for r in rows])
    assert_close(exp["rewards"].sum(1), expected_sum)
    assert (exp["kl"].abs().sum(1) > 0).all()  # a real KL, not a trivially zero one
    # advantages are GAE whitened over the real tokens of the batch
    raw_adv = cat(rows, "advantages")
    assert_close(exp["advantages"][mask], (raw_adv - raw_adv.mean()) / raw_adv.var(unbiased=False).add(1e-8).sqrt(),
                 atol=1e-4)
    for key in ("kl", "non_score_rewards", "rewards", "advantages", "returns", "values"):
        assert torch.equal(exp[key][~mask], torch.zeros_like(exp[key][~mask])), key

    # entropy: ppo_step's is the mean over real tokens only
    keys = ("query_responses", "attention_mask", "position_ids", "responses", "mask", "logprobs", "values",
            "advantages", "returns", "queries")
    out = trainer.ppo_step({k: exp[k] for k in keys}, 0)
    assert out["entropy"].item() == pytest.approx(cat(rows, "entropy").mean().item(), abs=1e-5)


def test_log_probs_values_and_scores_do_not_depend_on_left_padding(tok, prompts, tmp_path, monkeypatch):
    trainer = make_trainer(tok, prompts, tmp_path, response_length=5)
    trainer._setup(1)
    force_eos(monkeypatch, trainer, [2, None, 0, 3])
    queries = trainer._prompt_batch(0)
    responses, logprobs = trainer.generate_responses(queries)
    # strip the columns that are padding in every row: at least one row then has no left pad at all
    queries = queries[:, int((queries != tok.pad_token_id).any(0).nonzero()[0]):]
    assert (queries[:, 0] != tok.pad_token_id).any() and (queries[:, 0] == tok.pad_token_id).any()
    extra = torch.full((queries.shape[0], 5), tok.pad_token_id, dtype=torch.long)
    a = trainer.score_rollout(queries, responses)
    b = trainer.score_rollout(torch.cat([extra, queries], 1), responses)
    mask = responses != tok.pad_token_id
    for key in ("ref_logprobs", "values"):
        assert_close(b[key][mask], a[key][mask], atol=1e-5)
    assert_close(b["scores"], a["scores"], atol=1e-5)
    # and one row alone, with no padding anywhere in its prompt, sampled and scored on its own
    row = 1
    q = queries[row][queries[row] != tok.pad_token_id][None]
    alone = trainer.score_rollout(q, responses[row:row + 1])
    assert_close(alone["ref_logprobs"][0][mask[row]], a["ref_logprobs"][row][mask[row]], atol=1e-5)
    assert_close(alone["scores"], a["scores"][row:row + 1], atol=1e-5)
    fix_generation(monkeypatch, trainer, responses[row:row + 1])
    alone_responses, alone_logprobs = trainer.generate_responses(q)
    assert torch.equal(alone_responses, responses[row:row + 1])
    assert_close(alone_logprobs[0][mask[row]], logprobs[row][mask[row]], atol=1e-5)


def test_truncation_after_eos_and_missing_eos_penalty_counts_response_tokens_only(tok, prompts, tmp_path,
                                                                                   monkeypatch):
    eos, pad = tok.eos_token_id, tok.pad_token_id
    a, b, c, d = 5, 6, 7, 8
    assert torch.equal(core.truncate_after_stop_token(torch.tensor([[a, b, eos, c]]), eos, pad),
                       torch.tensor([[a, b, eos, pad]]))

    trainer = make_trainer(tok, prompts, tmp_path, missing_eos_penalty=2.5, response_length=6)
    trainer._setup(1)
    raw = torch.tensor([[a, b, eos, c],      # -> a b EOS PAD PAD PAD
                        [a, b, c, d],        # no EOS in the response (its prompt has one): penalised
                        [a, pad, b, eos],    # a sampled pad ends the response: everything after is pad
                        [eos, a, eos, b]])   # EOS first: a one-token response
    fix_generation(monkeypatch, trainer, raw)
    queries = trainer._prompt_batch(0)
    queries[1, -2] = eos  # an EOS inside the prompt must not count as the response's
    responses, _ = trainer.generate_responses(queries)
    assert responses.tolist() == [[a, b, eos, pad, pad, pad], [a, b, c, d, pad, pad],
                                  [a, pad, pad, pad, pad, pad], [eos, pad, pad, pad, pad, pad]]

    exp = trainer.make_experience(queries)
    # the two columns that are padding in every row are dropped before scoring: nothing reads them
    assert torch.equal(exp["responses"], responses[:, :4])
    for key in ("logprobs", "ref_logprobs", "values", "rewards", "advantages", "query_responses"):
        assert exp[key].shape[1] == (queries.shape[1] + 4 if key == "query_responses" else 4), key
    assert exp["mask"].sum(1).tolist() == [3, 4, 1, 1]
    rm = trainer.reward_model
    with torch.no_grad():
        raw_scores = torch.stack([score_of(rm, unpadded(q, r, pad)[0]) for q, r in zip(queries, responses)])
    assert_close(exp["raw_scores"], raw_scores)
    assert_close(exp["scores"], raw_scores - 2.5 * torch.tensor([0.0, 1.0, 1.0, 0.0]))
    # responses under min_response_length (4) tokens lose short_response_penalty (2.0) * the missing fraction
    trainer.args.min_response_length, trainer.args.short_response_penalty = 4, 2.0
    short = trainer.make_experience(queries)
    assert_close(short["scores"], exp["scores"] - 2.0 * torch.tensor([0.25, 0.0, 0.75, 0.75]))


# ---------------------------------------------------------------------------------------------------------------------
# Losses and gradients
# ---------------------------------------------------------------------------------------------------------------------
MICRO_KEYS = ("query_responses", "attention_mask", "position_ids", "responses", "mask", "logprobs", "values",
              "advantages", "returns", "queries")


def grads_of(module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


def manual_ppo_loss(micro, tok, policy, vm, cliprange, cliprange_value, vf_coef):
    """Clipped surrogate + vf_coef * clipped value loss, token by token on unpadded sequences."""
    pg_terms, vf_terms, ratios = [], [], []
    for i in range(micro["responses"].shape[0]):
        ids, q_len, n = unpadded(micro["queries"][i], micro["responses"][i], tok.pad_token_id)
        lp = logprobs_of(policy, ids, q_len, n)
        v = values_of(vm, ids, q_len, n)
        adv, old_lp = micro["advantages"][i, :n], micro["logprobs"][i, :n]
        old_v, ret = micro["values"][i, :n], micro["returns"][i, :n]
        ratio = torch.exp(lp - old_lp)
        pg_terms.append(torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - cliprange, 1 + cliprange)))
        v_clip = old_v + (v - old_v).clamp(-cliprange_value, cliprange_value)
        vf_terms.append(torch.maximum((v - ret) ** 2, (v_clip - ret) ** 2))
        ratios.append(ratio.detach())
    pg, vf = torch.cat(pg_terms).mean(), 0.5 * torch.cat(vf_terms).mean()
    return pg + vf_coef * vf, torch.cat(ratios)


def manual_lm_loss(policy, rows) -> torch.Tensor:
    total, count = 0.0, 0
    for ids in rows:
        ids = torch.tensor(ids)[None]
        logits = policy(input_ids=ids).logits[0, :-1].float()
        total = total + torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum")
        count += ids.shape[1] - 1
    return total / count


def test_gradients_equal_plain_ppo_without_ptx_and_ptx_moves_them(tok, prompts, ptx, tmp_path, monkeypatch):
    vf_coef, ptx_coef, cliprange, cliprange_value = 0.3, 0.5, 0.2, 0.05
    trainer = make_trainer(tok, prompts, tmp_path, ptx_dataset=ptx, ptx_coef=0.0, ptx_batch_size=3,
                           vf_coef=vf_coef, cliprange=cliprange, cliprange_value=cliprange_value, response_length=6)
    trainer._setup(1)
    force_eos(monkeypatch, trainer, [1, None, 4, 2])
    exp = trainer.make_experience(trainer._prompt_batch(0))
    micro = {k: exp[k].clone() for k in MICRO_KEYS}
    # as if the policy and value function had already moved: ratios leave [1-eps, 1+eps] and value clipping bites
    generator = torch.Generator().manual_seed(0)
    micro["logprobs"] += 0.6 * torch.randn(micro["logprobs"].shape, generator=generator)
    micro["values"] += 0.3 * torch.randn(micro["values"].shape, generator=generator)
    unwrapped = trainer._unwrapped()
    policy, vm = unwrapped.policy, unwrapped.value_model

    def trainer_grads(micro_step=0):
        trainer.model.zero_grad()
        out = trainer.ppo_step(micro, micro_step)
        trainer.accelerator.backward(out["loss"])
        return out, grads_of(unwrapped)

    out, plain = trainer_grads()
    assert out["ptx_loss"].item() == 0.0
    unwrapped.zero_grad()
    loss, ratios = manual_ppo_loss(micro, tok, policy, vm, cliprange, cliprange_value, vf_coef)
    loss.backward()
    manual = grads_of(unwrapped)
    assert ((ratios < 1 - cliprange) | (ratios > 1 + cliprange)).any()  # the clipped branch is exercised
    assert 0 < out["clipfrac"].item() < 1 and 0 < out["vf_clipfrac"].item() < 1
    assert out["loss"].item() == pytest.approx(loss.item(), rel=1e-5, abs=1e-6)
    assert set(plain) == set(manual) and any(n.startswith("value_model.") for n in plain)
    for name in manual:
        assert_close(plain[name], manual[name], atol=1e-6, rtol=1e-4)

    # PPO-ptx: the same micro-batch plus ptx_coef * LM loss on the ptx rows of micro-step 3
    trainer.args.ptx_coef = ptx_coef
    out_ptx, with_ptx = trainer_grads(micro_step=3)
    rows = [ptx[(3 * 3 + i) % len(ptx)]["input_ids"] for i in range(3)]
    unwrapped.zero_grad()
    lm_loss = manual_lm_loss(policy, rows)
    lm_loss.backward()
    lm_grads = grads_of(unwrapped)
    assert out_ptx["ptx_loss"].item() == pytest.approx(lm_loss.item(), rel=1e-5)
    assert out_ptx["loss"].item() == pytest.approx(loss.item() + ptx_coef * lm_loss.item(), rel=1e-5)
    moved = 0
    for name, grad in with_ptx.items():
        expected = plain[name] + ptx_coef * lm_grads.get(name, torch.zeros_like(grad))
        assert_close(grad, expected, atol=1e-6, rtol=1e-4)
        moved += int(not torch.allclose(grad, plain[name]))
    assert moved > 0
    # the value function gets no gradient from the LM loss
    assert all(torch.equal(with_ptx[n], plain[n]) for n in plain if n.startswith("value_model."))

    # entropy bonus: the same micro-batch, loss minus entropy_coef * the mean token entropy, which now has a gradient
    trainer.args.ptx_coef, trainer.args.entropy_coef = 0.0, 0.5
    out_ent, with_ent = trainer_grads()
    assert out_ent["entropy"].item() == pytest.approx(out["entropy"].item(), rel=1e-6) and out["entropy"] > 0
    assert out_ent["loss"].item() == pytest.approx(loss.item() - 0.5 * out["entropy"].item(), rel=1e-5)
    assert any(not torch.allclose(with_ent[n], plain[n]) for n in plain if n.startswith("policy."))
    assert all(torch.equal(with_ent[n], plain[n]) for n in plain if n.startswith("value_model."))


class _Capture:
    def __init__(self, trainer, monkeypatch):
        self.experiences = []
        original = trainer.make_experience

        def capture(queries):
            exp = original(queries)
            self.experiences.append({k: v.clone() for k, v in exp.items()})
            return exp

        monkeypatch.setattr(trainer, "make_experience", capture)


def test_logged_metrics_of_one_update_equal_hand_computed_values(tok, prompts, ptx, tmp_path, monkeypatch):
    beta, target, horizon, lr = 0.1, 0.5, 100, 1e-3
    trainer = make_trainer(tok, prompts, tmp_path, kl_coef=beta, target_kl=target, kl_horizon=horizon,
                           ptx_dataset=ptx, ptx_coef=0.2, ptx_batch_size=2, learning_rate=lr, response_length=6,
                           missing_eos_penalty=1.5)
    unwrapped = trainer.model
    initial = copy.deepcopy(unwrapped)
    force_eos(monkeypatch, trainer, [2, None, 0, 4])
    capture = _Capture(trainer, monkeypatch)
    state = trainer.train()
    assert state.global_step == 1
    (log,) = [entry for entry in state.log_history if "objective/kl" in entry]
    exp = capture.experiences[0]
    rows = recompute(exp, tok, initial.policy, trainer.ref_model, trainer.reward_model, initial.value_model, beta,
                     penalty=1.5)

    kl_sum = torch.stack([r["kl"].sum() for r in rows])
    scores = torch.stack([r["score"] for r in rows])
    assert scores.tolist() != torch.stack([r["raw_score"] for r in rows]).tolist()  # the penalty applied
    assert log["objective/kl"] == pytest.approx(kl_sum.mean().item(), abs=1e-5)
    assert log["objective/non_score_reward"] == pytest.approx(-beta * kl_sum.mean().item(), abs=1e-5)
    assert log["objective/scores"] == pytest.approx(scores.mean().item(), abs=1e-5)
    assert log["objective/rlhf_reward"] == pytest.approx((scores - beta * kl_sum).mean().item(), abs=1e-5)
    assert log["objective/entropy"] == pytest.approx(torch.stack([-r["lp"].sum() for r in rows]).mean().item(),
                                                     rel=1e-5)
    assert log["policy/entropy_avg"] == pytest.approx(cat(rows, "entropy").mean().item(), rel=1e-5)
    # one micro-batch, before any optimizer step
    assert log["val/ratio"] == pytest.approx(1.0, abs=1e-5)
    assert log["policy/approxkl_avg"] == pytest.approx(0.0, abs=1e-5)
    assert log["policy/clipfrac_avg"] == 0.0 and log["val/clipfrac_avg"] == 0.0
    assert log["loss/policy_avg"] == pytest.approx(0.0, abs=1e-5)  # -mean of whitened advantages
    raw_adv = cat(rows, "advantages")  # returns - values = unwhitened advantages
    assert log["loss/value_avg"] == pytest.approx(0.5 * (raw_adv ** 2).mean().item(), rel=1e-5)
    with torch.no_grad():
        ptx_loss = manual_lm_loss(initial.policy, [ptx[i]["input_ids"] for i in range(2)])
    assert log["loss/ptx"] == pytest.approx(ptx_loss.item(), rel=1e-5)
    assert log["val/num_eos_tokens"] == 3
    assert log["val/mean_response_length"] == pytest.approx(sum(r["n"] for r in rows) / 4)
    assert log["lr"] == pytest.approx(lr)
    assert log["episode"] == 4
    assert log["objective/kl_coef"] == pytest.approx(beta)  # the beta this update used
    error = min(max(kl_sum.mean().item() / target - 1, -0.2), 0.2)
    assert trainer.kl_ctl.value == pytest.approx(beta * (1 + error * 4 / horizon), rel=1e-6)
    assert set(TRL_METRICS) <= set(log) and all(math.isfinite(log[k]) for k in TRL_METRICS)
    # and the update did move both networks
    assert not torch.equal(unwrapped.policy.transformer.h[0].attn.c_attn.weight,
                           initial.policy.transformer.h[0].attn.c_attn.weight)
    assert not torch.equal(unwrapped.value_model.score.weight, initial.value_model.score.weight)


# ---------------------------------------------------------------------------------------------------------------------
# LoRA: one copy of the base weights, and the disabled adapter is pi_SFT
# ---------------------------------------------------------------------------------------------------------------------
def storages(*modules) -> set[int]:
    return {p.untyped_storage().data_ptr() for m in modules if m is not None for p in m.parameters()}


def test_lora_policy_keeps_one_copy_of_the_base_and_its_disabled_adapter_is_the_sft_model(
        sft_dir, tok, prompts, tmp_path):
    model_args = ModelConfig(model_name_or_path=str(sft_dir), dtype="float32", use_peft=True, lora_r=4,
                             lora_alpha=8, lora_target_modules=["c_attn"])
    policy = load_model(model_args, tok)
    torch.manual_seed(0)
    for name, param in policy.named_parameters():
        if "lora_B" in name:  # a trained-looking adapter, so that pi_RL != pi_SFT
            param.data.normal_(0, 0.3)
    trainer = make_trainer(tok, prompts, tmp_path, policy=policy, ref=None, response_length=8)
    trainer._setup(1)
    assert trainer.ref_model is None and trainer.policy_is_peft

    sft = AutoModelForCausalLM.from_pretrained(str(sft_dir), dtype=torch.float32).eval()
    held = trainer._unwrapped().policy
    lora = [n for n, _ in held.named_parameters() if "lora_" in n]
    assert len(lora) == 2 * sft.config.n_layer  # A and B of c_attn in each layer
    assert len(storages(held, trainer.ref_model)) == len(storages(sft)) + len(lora)
    assert sum(p.numel() for p in held.parameters() if not p.requires_grad) == sum(p.numel() for p in sft.parameters())

    exp = trainer.make_experience(trainer._prompt_batch(0))
    mask = exp["mask"]
    with torch.no_grad():
        sft_lp = torch.cat([logprobs_of(sft, *unpadded(q, r, tok.pad_token_id))
                            for q, r in zip(exp["queries"], exp["responses"])])
    assert_close(exp["ref_logprobs"][mask], sft_lp, atol=1e-5)
    assert (exp["logprobs"][mask] - exp["ref_logprobs"][mask]).abs().max() > 1e-2  # the adapter is live


# ---------------------------------------------------------------------------------------------------------------------
# Non-finite values
# ---------------------------------------------------------------------------------------------------------------------
def nan_rewards(monkeypatch, reward_model, calls_with_nan: set[int]):
    real_forward = reward_model.forward
    calls = {"n": 0}

    def forward(*args, **kwargs):
        out = real_forward(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] in calls_with_nan:
            out.logits = torch.full_like(out.logits, float("nan"))
        return out

    monkeypatch.setattr(reward_model, "forward", forward)


class _Snapshots(TrainerCallback):
    def __init__(self, module):
        self.module, self.weights = module, [copy.deepcopy(module.state_dict())]

    def on_step_end(self, args, state, control, **kwargs):
        self.weights.append(copy.deepcopy(self.module.state_dict()))


def same_weights(a, b) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_nan_reward_stops_the_run_naming_quantity_and_step(tok, prompts, tmp_path, monkeypatch):
    trainer = make_trainer(tok, prompts, tmp_path, total_episodes=8)
    before = copy.deepcopy(trainer.model.state_dict())
    nan_rewards(monkeypatch, trainer.reward_model, set(range(1, 100)))
    with pytest.raises(NonFiniteError, match=r"Non-finite scores at PPO update 1 "):
        trainer.train()
    assert same_weights(before, trainer.model.state_dict())


def test_nan_reward_with_skip_drops_the_batch_and_continues(tok, prompts, tmp_path, monkeypatch):
    trainer = make_trainer(tok, prompts, tmp_path, total_episodes=12, non_finite="skip")
    snapshots = _Snapshots(trainer.model)
    trainer.add_callback(snapshots)
    nan_rewards(monkeypatch, trainer.reward_model, {2})  # the scores of update 2 only
    state = trainer.train()
    assert state.global_step == 3
    assert [e["step"] for e in state.log_history if "objective/kl" in e] == [1, 3]
    w0, w1, w2, w3 = snapshots.weights
    assert not same_weights(w0, w1) and same_weights(w1, w2) and not same_weights(w2, w3)
    assert all(torch.isfinite(v).all() for v in w3.values())


# ---------------------------------------------------------------------------------------------------------------------
# The recipe: a kill after a checkpoint and a resume reach the uninterrupted run's weights and logs
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reward_dir(sft_dir, tok, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ppo-rm")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(sft_dir), num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def recipe_command(demo_dir, sft_dir, reward_dir, out, *extra) -> list[str]:
    return [sys.executable, str(REPO / "recipes/ppo.py"), "--config", str(REPO / "recipes/demo/ppo.yaml"),
            "--model_name_or_path", str(sft_dir), "--sft_model_path", str(sft_dir),
            "--reward_model_path", str(reward_dir), "--dataset_name", str(demo_dir / "data/prompts"),
            "--ptx_dataset", str(demo_dir / "data/ptx/train.jsonl"), "--output_dir", str(out),
            "--total_episodes", "64", "--per_device_train_batch_size", "8", "--num_mini_batches", "2",
            "--save_steps", "2", "--response_length", "12", "--num_ppo_epochs", "2", "--max_eval_samples", "8",
            "--disable_tqdm", "true", *extra]


def recipe_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"),
                                                                               os.environ.get("PYTHONPATH")]))}


def comparable(log_history) -> list[dict]:
    return [{k: v for k, v in entry.items() if not k.startswith("time/")} for entry in log_history]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_kill_after_checkpoint_and_resume_reach_the_uninterrupted_run(demo_dir, sft_dir, reward_dir, tmp_path):
    """The run to kill is a subprocess (SIGKILL after checkpoint-2 appears); the uninterrupted run goes meanwhile,
    and the resume after, in this process (both on one thread, as the subprocess)."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    log_file = tmp_path / "killed.log"
    with open(log_file, "w") as log:
        victim = subprocess.Popen(recipe_command(demo_dir, sft_dir, reward_dir, killed), cwd=REPO, env=recipe_env(),
                                  stdout=log, stderr=subprocess.STDOUT)
    outcome = {}

    def kill_after_checkpoint_2():
        deadline = time.time() + 400
        while not (killed / "checkpoint-2").is_dir() and victim.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
        outcome["rc"] = victim.wait(60)
        outcome["checkpoints"] = sorted(p.name for p in killed.glob("checkpoint-*"))
        outcome["finished"] = (killed / "model.safetensors").exists()

    killer = threading.Thread(target=kill_after_checkpoint_2, daemon=True)
    killer.start()
    try:
        run_recipe("ppo", recipe_command(demo_dir, sft_dir, reward_dir, straight)[2:])
        killer.join(420)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert outcome["rc"] == -signal.SIGKILL, log_file.read_text()[-4000:]
    assert outcome["checkpoints"] == ["checkpoint-2"] and not outcome["finished"]
    state_at_kill = json.loads((killed / "checkpoint-2/trainer_state.json").read_text())
    run_recipe("ppo", recipe_command(demo_dir, sft_dir, reward_dir, killed, "--resume_from_checkpoint",
                                     "latest")[2:])

    for weights in ("model.safetensors", "value_model/model.safetensors"):
        a, b = load_file(straight / weights), load_file(killed / weights)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.allclose(a[key], b[key], atol=1e-6, rtol=0), f"{weights}: {key}"
    first = json.loads((straight / "checkpoint-4/trainer_state.json").read_text())
    second = json.loads((killed / "checkpoint-4/trainer_state.json").read_text())
    assert first["global_step"] == second["global_step"] == 4
    assert comparable(first["log_history"]) == comparable(second["log_history"])
    # the resumed run did not redo updates 1-2: their entries (timings included) are the killed run's
    assert second["log_history"][:2] == state_at_kill["log_history"][:2]
    assert json.loads((straight / "ppo_state.json").read_text()) == json.loads((killed / "ppo_state.json").read_text())

    # TRL's metric names, finite, at every update
    assert [e["step"] for e in first["log_history"]] == [1, 2, 3, 4]
    for entry in first["log_history"]:
        missing = [k for k in TRL_METRICS if k not in entry]
        assert not missing, missing
        assert all(math.isfinite(entry[k]) for k in TRL_METRICS), entry
    assert [e["episode"] for e in first["log_history"]] == [16, 32, 48, 64]
    assert all(e["loss/ptx"] > 0 for e in first["log_history"])
