"""Issue 16: PPO in bf16 autocast keeps PPO's invariants, the static-cache sampler draws what `generate` draws, and
a non-finite loss is skipped on the device by the fused AdamW (no host sync in the mini-batch loop)."""

from __future__ import annotations

import copy
from contextlib import nullcontext

import pytest
import test_ppo_trainer as ppo_tests
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from rlhf_recipes.ppo.trainer import NonFiniteError

pytestmark = pytest.mark.usefixtures("one_torch_thread")
make_trainer = ppo_tests.make_trainer
tok, prompts, reward_dir = ppo_tests.tok, ppo_tests.prompts, ppo_tests.reward_dir  # the PPO tests' fixtures


class _Experiences:
    """Wraps make_experience and ppo_step to keep what one update saw."""

    def __init__(self, trainer):
        self.experiences, self.steps = [], []
        make, step = trainer.make_experience, trainer.ppo_step

        def make_experience(queries):
            self.experiences.append(make(queries))
            return self.experiences[-1]

        def ppo_step(batch, micro_step):
            self.steps.append(step(batch, micro_step))
            return self.steps[-1]

        trainer.make_experience, trainer.ppo_step = make_experience, ppo_step


def test_bf16_with_zero_learning_rate_keeps_kl_zero_and_ratio_one_on_the_demo_model(sft_dir, reward_dir, tok,
                                                                                       prompts, tmp_path):
    policy = AutoModelForCausalLM.from_pretrained(str(sft_dir), dtype=torch.float32)
    ref = copy.deepcopy(policy)
    rm = AutoModelForSequenceClassification.from_pretrained(str(reward_dir), dtype=torch.float32)
    vm = copy.deepcopy(rm)
    trainer = make_trainer(tok, prompts, tmp_path, policy=policy, ref=ref, rm=rm, vm=vm, bf16=True, learning_rate=0.0,
                           per_device_train_batch_size=8, num_mini_batches=2, num_ppo_epochs=2, total_episodes=32,
                           response_length=16, temperature=1.0, kl_coef=0.1)
    seen = _Experiences(trainer)
    weight = trainer.model.policy.transformer.h[0].attn.c_attn.weight
    before = weight.detach().clone()
    state = trainer.train()
    logs = [e for e in state.log_history if "objective/kl" in e]
    assert len(logs) == 2
    for log in logs:
        assert abs(log["objective/kl"]) < 2e-3, log
        assert abs(log["val/ratio"] - 1) < 2e-3 and log["policy/approxkl_avg"] < 2e-3, log
    # it really ran in bf16 (the policy's forward was autocast), while the master weights stay fp32 and unchanged
    exp = seen.experiences[0]
    assert weight.dtype == torch.float32 and torch.equal(weight.detach(), before)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        half = trainer.model.policy(input_ids=exp["query_responses"][:2]).logits
    assert half.dtype == torch.bfloat16
    fp32 = torch.stack([trainer._forward_logprobs(trainer.model.policy, exp["query_responses"], exp["attention_mask"],
                                                  exp["position_ids"], exp["responses"])])[0]
    mask = exp["mask"]
    drift = (fp32 - exp["logprobs"])[mask].abs()
    assert drift.max() > 0  # bf16 log-probs are not the fp32 ones: the rollout did use autocast ...
    assert drift.mean() < 0.05  # ... and stay close to them
    # the optimizer state is fp32 too
    states = [s for s in trainer.optimizer.state.values() if "exp_avg" in s]
    assert states and all(s["exp_avg"].dtype == torch.float32 for s in states)


@pytest.mark.parametrize("backend", ["static"])
def test_static_cache_sampler_draws_what_generate_draws(backend, sft_dir, tok, prompts, tmp_path):
    runs = {}
    for name in ("generate", backend):
        policy = AutoModelForCausalLM.from_pretrained(str(sft_dir), dtype=torch.float32)
        trainer = make_trainer(tok, prompts, tmp_path / name, policy=policy, response_length=24, temperature=1.0,
                               generation_backend=name, per_device_train_batch_size=8,
                               total_episodes=8)
        trainer._setup(1)
        queries = trainer._prompt_batch(0)
        torch.manual_seed(123)
        runs[name] = trainer.generate_responses(queries)
    (r_hf, lp_hf), (r_ours, lp_ours) = runs["generate"], runs[backend]
    assert torch.equal(r_hf, r_ours)
    mask = r_hf != tok.pad_token_id
    assert mask.sum() > 8 and (~mask).any()  # real tokens, and some rows stopped early
    torch.testing.assert_close(lp_ours[mask], lp_hf[mask], atol=1e-5, rtol=1e-5)


def _poison_loss(trainer):
    step = trainer.ppo_step

    def ppo_step(batch, micro_step):
        out = step(batch, micro_step)
        out["loss"] = out["loss"] * float("nan")  # the gradients turn NaN too, as after a real overflow
        return out

    trainer.ppo_step = ppo_step


def test_non_finite_loss_is_skipped_on_the_device_by_the_fused_optimizer(tok, prompts, tmp_path):
    trainer = make_trainer(tok, prompts, tmp_path / "skip", non_finite="skip", total_episodes=4)
    trainer._setup(1)
    trainer.state.episode = 0  # train() sets it
    assert trainer._fused_torch_optimizer() is not None  # TrainingArguments' default optim: adamw_torch_fused
    exp = trainer.make_experience(trainer._prompt_batch(0))
    before = copy.deepcopy(trainer.model.state_dict())
    _poison_loss(trainer)
    assert trainer.optimise(exp, 0) is None
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    steps = [s["step"] for s in trainer.optimizer.state.values() if "step" in s]
    assert all(float(s) == 0 for s in steps)  # the skipped step did not count either

    trainer = make_trainer(tok, prompts, tmp_path / "stop", total_episodes=4)
    trainer._setup(1)
    trainer.state.episode = 0
    exp = trainer.make_experience(trainer._prompt_batch(0))
    _poison_loss(trainer)
    with pytest.raises(NonFiniteError, match=r"Non-finite loss at PPO update 1 "):
        trainer.optimise(exp, 0)


def test_bf16_lora_rollout_casts_the_frozen_base_once_and_keeps_it_frozen(sft_dir, tok, prompts, tmp_path,
                                                                          monkeypatch):
    from trl import ModelConfig

    from rlhf_recipes.models import load_model
    from rlhf_recipes.ppo import trainer as trainer_module
    from rlhf_recipes.ppo.trainer import cached_autocast_weights

    model_args = ModelConfig(model_name_or_path=str(sft_dir), dtype="float32", use_peft=True, lora_r=4,
                             lora_alpha=8, lora_target_modules=["c_attn"])
    policy = load_model(model_args, tok)
    frozen = {n for n, p in policy.named_parameters() if not p.requires_grad}
    trainer = make_trainer(tok, prompts, tmp_path, policy=policy, ref=None, bf16=True, response_length=12,
                           temperature=1.0, per_device_train_batch_size=8, total_episodes=8)
    trainer._setup(1)
    queries = trainer._prompt_batch(0)

    def casts_in_one_rollout():
        torch.manual_seed(0)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            responses, _ = trainer.generate_responses(queries)
        return sum(e.count for e in prof.key_averages() if e.key == "aten::_to_copy"), responses

    cached, responses = casts_in_one_rollout()
    monkeypatch.setattr(trainer_module, "cached_autocast_weights", lambda module, enabled=True: nullcontext())
    uncached, same = casts_in_one_rollout()
    steps = int((responses != tok.pad_token_id).any(0).sum())
    base_weights = sum(1 for n in frozen if n.endswith(".weight") and ".h." in n)  # the blocks' matmul weights
    assert torch.equal(responses, same) and steps > 2
    # without the cache every decode step casts every frozen matmul weight again
    assert uncached - cached >= (steps - 1) * base_weights // 2, (uncached, cached, steps, base_weights)
    # the base is still frozen afterwards, even when the block fails
    assert {n for n, p in policy.named_parameters() if not p.requires_grad} == frozen
    with pytest.raises(RuntimeError), cached_autocast_weights(policy):
        raise RuntimeError
    assert {n for n, p in policy.named_parameters() if not p.requires_grad} == frozen
    exp = trainer.make_experience(trainer._prompt_batch(0))
    mask = exp["mask"]
    assert mask.any() and torch.equal(exp["logprobs"][mask], exp["ref_logprobs"][mask])  # B = 0: pi_RL = pi_SFT
