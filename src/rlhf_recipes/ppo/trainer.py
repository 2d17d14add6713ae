"""Our PPO-ptx trainer (InstructGPT stage 3), built on `transformers.Trainer` and accelerate.

One call to `train()` repeats this *update* until `total_episodes` are seen (the math is in `core.py`):

    1. rollout    sample y ~ pi_RL(.|x) for a batch of prompts x (KV cache, top_k=0, top_p=1, temperature),
                  truncate after the first EOS and pad the rest; log pi_RL(y|x) from the sampling logits
    2. score      log pi_SFT(y|x) (the frozen reference; the disabled adapter under LoRA), values V(x, y_<t),
                  and the normalised reward r(x, y) read at the EOS
    3. rewards    per token: -beta * KL_t, plus r(x, y) at the last token;  GAE(gamma, lam) -> advantages, returns
    4. optimise   num_ppo_epochs x num_mini_batches shuffled minibatches of the clipped policy loss
                  + vf_coef * clipped value loss + ptx_coef * pretraining LM loss, in one optimizer step
    5. adapt      beta with the KL controller; log TRL's metric names; checkpoint when due

Everything the Trainer offers users still works: callbacks, `report_to`, the progress bar, `save_steps`,
`resume_from_checkpoint`, `save_model` and `push_to_hub`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from transformers import GenerationConfig, PreTrainedTokenizerBase, Trainer, TrainerState
from transformers.trainer_callback import ExportableState
from trl.models.utils import prepare_deepspeed, unwrap_model_for_generation

from ..checkpoints import AtomicCheckpointMixin, NonFiniteError
from ..models import disable_dropout, reward_scores, use_fused_gelu
from . import core
from .config import PPOConfig
from .generation import StaticSampler

logger = logging.getLogger(__name__)
PPO_STATE_FILE = "ppo_state.json"
VALUE_MODEL_DIR = "value_model"


class PolicyAndValue(nn.Module):
    """The two trained networks behind one module, so one optimizer and one DDP/DeepSpeed engine hold both.

    The forward also takes an optional pretraining batch, so the PPO-ptx loss goes through the same engine call
    (DDP and ZeRO see every trained parameter in one forward).
    """

    def __init__(self, policy: nn.Module, value_model: nn.Module) -> None:
        super().__init__()
        self.policy = policy
        self.value_model = value_model

    @property
    def config(self):  # Trainer reads `model.config` in places
        return self.policy.config

    # Activation checkpointing applies to both networks; generation turns it off and back on through these.
    @property
    def is_activation_checkpointing(self) -> bool:
        return bool(getattr(self.policy, "is_activation_checkpointing", False))

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None,
                                        every_n_layers: int = 1, offload: bool = False) -> None:
        kwargs = activation_checkpointing_kwargs or {"use_reentrant": False}
        for module in (self.policy, self.value_model):
            module.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs,
                                                   every_n_layers=every_n_layers, offload=offload)

    def activation_checkpointing_disable(self) -> None:
        for module in (self.policy, self.value_model):
            module.activation_checkpointing_disable()

    # TRL's unwrap_model_for_generation still calls the pre-transformers-5.25 names on the unwrapped model.
    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.is_activation_checkpointing

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs)

    def gradient_checkpointing_disable(self) -> None:
        self.activation_checkpointing_disable()

    def forward(self, input_ids, attention_mask, position_ids, logits_to_keep: int = 0, ptx_input_ids=None,
                ptx_attention_mask=None, ptx_labels=None):
        # logits_to_keep = response length + 1: the LM head runs on the positions PPO reads, not on the prompt's.
        logits = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             use_cache=False, logits_to_keep=logits_to_keep).logits
        values = compute_values(self.value_model, input_ids, attention_mask, position_ids)
        ptx_loss = None
        if ptx_input_ids is not None:
            ptx_loss = self.policy(input_ids=ptx_input_ids, attention_mask=ptx_attention_mask, labels=ptx_labels,
                                   use_cache=False).loss
        return logits, values, ptx_loss


def compute_values(value_model: nn.Module, input_ids, attention_mask, position_ids) -> torch.Tensor:
    """V(x, y_<t) at every position: the value model's scalar head applied to each hidden state (not pooled)."""
    model = value_model.get_base_model() if hasattr(value_model, "get_base_model") else value_model
    backbone = getattr(model, model.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      use_cache=False).last_hidden_state
    return model.score(hidden).squeeze(-1).float()


@contextmanager
def cached_autocast_weights(module: nn.Module, enabled: bool = True):
    """Let autocast cast frozen fp32 weights once per region instead of at every call.

    Autocast caches its bf16 copy of a weight only when the weight requires grad; a frozen one (a LoRA base) is cast
    again in every forward, i.e. at every decode step of a rollout. Marking the frozen weights as requiring grad for
    the duration (under no_grad, so no graph is built) makes one cast per weight per rollout.
    """
    frozen = [p for p in module.parameters() if enabled and not p.requires_grad and p.dtype == torch.float32]
    for p in frozen:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(False)


def position_ids_from(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that ignore left padding, so log-probs and values do not depend on how much padding there is."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


class PPOTrainer(AtomicCheckpointMixin, Trainer):
    def __init__(
        self,
        args: PPOConfig,
        processing_class: PreTrainedTokenizerBase,
        model: nn.Module,
        ref_model: nn.Module | None,
        reward_model: nn.Module,
        value_model: nn.Module,
        train_dataset,
        eval_dataset=None,
        ptx_dataset=None,
        callbacks=None,
    ) -> None:
        if processing_class.pad_token_id is None or processing_class.pad_token_id == processing_class.eos_token_id:
            raise ValueError("PPO needs a pad token distinct from EOS; load the tokenizer with models.load_tokenizer.")
        self.policy_is_peft = hasattr(model, "disable_adapter")
        if ref_model is None and not self.policy_is_peft:
            raise ValueError("Pass a frozen reference model, or a LoRA policy whose disabled adapter is the reference.")
        for module in (model, ref_model, reward_model, value_model):
            if module is not None:
                disable_dropout(module)
                use_fused_gelu(module)
        wrapper = PolicyAndValue(model, value_model)
        if args.activation_checkpointing:
            wrapper.activation_checkpointing_enable(args.activation_checkpointing_kwargs)
        super().__init__(model=wrapper, args=args, processing_class=processing_class, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, callbacks=callbacks)
        self.ref_model, self.reward_model = ref_model, reward_model
        # what the accelerator does, not only what was asked (`accelerate launch --mixed_precision no` wins)
        self.mixed_precision = self.accelerator.mixed_precision in ("bf16", "fp16")
        self.ptx_dataset = ptx_dataset
        self.kl_ctl = core.make_kl_controller(args.kl_coef, args.target_kl, args.kl_horizon)
        self.pad_token_id = processing_class.pad_token_id
        if args.stop_token_id is not None:
            self.stop_token_id = args.stop_token_id
        elif args.stop_token == "eos":
            self.stop_token_id = processing_class.eos_token_id
        else:
            self.stop_token_id = None
        self.generation_config = GenerationConfig(
            max_new_tokens=args.response_length, temperature=args.temperature + 1e-7, top_k=0, top_p=1.0,
            do_sample=True, eos_token_id=self.stop_token_id, pad_token_id=self.pad_token_id,
            return_dict_in_generate=True, output_logits=True,  # the rollout's log-probs come from these logits
        )
        # bf16/fp16: generation, scoring and the PPO epochs all run under autocast. The sampling logits come from
        # incremental (KV-cache) matmuls whose half-precision rounding differs from a full forward's, so in mixed
        # precision the rollout's log-probs are recomputed by the same full forward (same shapes, same autocast, fp32
        # log-softmax) the PPO epochs use: with no update the ratio is then 1 and the KL to an equal reference 0.
        self.sampler = (StaticSampler(compile_step=args.generation_backend == "compile")
                        if args.generation_backend != "generate" else None)

    # ------------------------------------------------------------------------------------------------------------
    # Setup
    # ------------------------------------------------------------------------------------------------------------
    def _prepare_frozen(self, module: nn.Module | None) -> nn.Module | None:
        if module is None:
            return None
        if self.is_deepspeed_enabled:
            return prepare_deepspeed(module, self.accelerator)
        if not getattr(module, "is_loaded_in_4bit", False) and not getattr(module, "is_loaded_in_8bit", False):
            module = module.to(self.accelerator.device)
        return module.eval()

    def _setup(self, num_updates: int) -> None:
        args = self.args
        sizes = args.batch_sizes(self.accelerator.num_processes)
        if sizes["local_batch_size"] % args.num_mini_batches:
            raise ValueError("per_device_train_batch_size * gradient_accumulation_steps must fill every minibatch.")
        self.sizes = sizes
        if self.is_deepspeed_enabled:
            ds_config = self.accelerator.state.deepspeed_plugin.deepspeed_config
            ds_config["train_micro_batch_size_per_gpu"] = args.per_device_train_batch_size
            ds_config["gradient_accumulation_steps"] = args.gradient_accumulation_steps
            ds_config["train_batch_size"] = (
                args.per_device_train_batch_size * args.gradient_accumulation_steps * self.accelerator.num_processes
            )
        # One scheduler step per update, as TRL did: the schedule spans the run whatever the minibatching.
        self.create_optimizer_and_scheduler(num_training_steps=num_updates)
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        # accelerate wraps the forward in autocast *and* casts every output to fp32, which would materialise the
        # [B, T, V] logits in fp32; ppo_step enters autocast itself and upcasts the logits chunk by chunk instead.
        inner = self._unwrapped()
        if hasattr(inner, "_original_forward"):
            inner.forward = inner._original_forward
        self.model_wrapped = self.model
        if self.is_deepspeed_enabled:
            self.deepspeed = self.model
        self.ref_model = self._prepare_frozen(self.ref_model)
        self.reward_model = self._prepare_frozen(self.reward_model)
        logger.info("PPO precision: %s; generation backend: %s.", f"{self.accelerator.mixed_precision} autocast "
                    "(fp32 weights and optimizer state)" if self.mixed_precision else "fp32", args.generation_backend)

    def _unwrapped(self) -> PolicyAndValue:
        return self.accelerator.unwrap_model(self.model)

    def _autocast(self):
        """bf16/fp16 autocast (CPU or CUDA) when mixed precision is on; weights and optimizer state stay fp32."""
        return self.accelerator.autocast()

    # ------------------------------------------------------------------------------------------------------------
    # Data: a deterministic stream of prompts, so that a resumed run sees the batches it would have seen
    # ------------------------------------------------------------------------------------------------------------
    def _prompt_batch(self, update: int) -> torch.Tensor:
        """Left-padded prompt ids of this process's share of update `update`'s batch."""
        n = len(self.train_dataset)
        local = self.sizes["local_batch_size"]
        start = update * self.sizes["batch_size"] + self.accelerator.process_index * local
        indices, permutations = [], {}  # a batch spans at most two data epochs: one permutation each
        for position in range(start, start + local):
            data_epoch, offset = divmod(position, n)
            if data_epoch not in permutations:
                generator = torch.Generator().manual_seed(self.args.seed + data_epoch)
                permutations[data_epoch] = torch.randperm(n, generator=generator)
            indices.append(int(permutations[data_epoch][offset]))
        return self._left_pad([self.train_dataset[i]["input_ids"] for i in indices])

    def _left_pad(self, sequences: list[list[int]]) -> torch.Tensor:
        width = max(len(s) for s in sequences)
        batch = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        for row, ids in enumerate(sequences):
            batch[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        return batch.to(self.accelerator.device)

    def _ptx_batch(self, micro_step: int) -> dict[str, torch.Tensor] | None:
        if self.args.ptx_coef <= 0 or self.ptx_dataset is None:
            return None
        n = len(self.ptx_dataset)
        size = self.args.ptx_batch_size
        start = (micro_step * self.accelerator.num_processes + self.accelerator.process_index) * size
        rows = [self.ptx_dataset[(start + i) % n]["input_ids"] for i in range(size)]
        width = max(len(r) for r in rows)
        ids = torch.full((size, width), self.pad_token_id, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        mask = ids != self.pad_token_id
        labels = ids.masked_fill(~mask, -100)
        device = self.accelerator.device
        return {"ptx_input_ids": ids.to(device), "ptx_attention_mask": mask.long().to(device),
                "ptx_labels": labels.to(device)}

    # ------------------------------------------------------------------------------------------------------------
    # Rollout and scoring (no gradients)
    # ------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_responses(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample responses with the KV cache; truncate after the first stop token and pad the rest.

        Also returns log pi_RL(y_t | x, y_<t) from the logits computed while sampling (raw, divided by the
        temperature), so in fp32 the rollout needs no second policy forward (in mixed precision `score_rollout`
        recomputes them). Positions after the end of a response hold whatever was computed there; the mask drops
        them. `generation_backend` picks transformers' `generate` or our static-cache loop (`generation.py`).
        """
        chunk = self.args.local_rollout_forward_batch_size
        width = self.args.response_length
        temperature = self.args.temperature + 1e-7
        padded = torch.full((queries.shape[0], width), self.pad_token_id, dtype=torch.long, device=queries.device)
        logprobs = torch.zeros((queries.shape[0], width), dtype=torch.float, device=queries.device)
        with unwrap_model_for_generation(self.model, self.accelerator,
                                         gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                                         gradient_checkpointing_kwargs=self.args.activation_checkpointing_kwargs
                                         ) as unwrapped, self._autocast(), cached_autocast_weights(
                unwrapped.policy, enabled=self.mixed_precision and not self.is_deepspeed_enabled):
            policy = unwrapped.policy
            for i in range(0, queries.shape[0], chunk):
                q = queries[i: i + chunk]
                if self.sampler is not None:
                    response, sampled = self.sampler(
                        policy, q, max_new_tokens=width, temperature=temperature, pad_token_id=self.pad_token_id,
                        stop_token_id=self.stop_token_id, want_logprobs=not self.mixed_precision)
                    padded[i: i + q.shape[0]] = response
                    if sampled is not None:
                        logprobs[i: i + q.shape[0]] = sampled
                    continue
                output = policy.generate(input_ids=q, attention_mask=(q != self.pad_token_id).long(),
                                         generation_config=self.generation_config)
                response = output.sequences[:, q.shape[1]:]
                steps = response.shape[1]  # fewer than `width` when every row stopped early
                padded[i: i + q.shape[0], :steps] = response
                if not self.mixed_precision:
                    logprobs[i: i + q.shape[0], :steps] = core.logprobs_from_logits(
                        torch.stack(output.logits, dim=1), response, temperature)
                del output
        if self.stop_token_id is not None:
            padded = core.truncate_after_stop_token(padded, self.stop_token_id, self.pad_token_id)
        # Anything after the first pad is padding, even if the policy sampled the pad token itself.
        first_pad = core.first_true_indices(padded == self.pad_token_id)
        keep = torch.arange(width, device=padded.device)[None, :] < first_pad[:, None]
        return torch.where(keep, padded, torch.full_like(padded, self.pad_token_id)), logprobs

    def _forward_logprobs(self, model, query_responses, attention_mask, position_ids, responses) -> torch.Tensor:
        logits = model(input_ids=query_responses, attention_mask=attention_mask, position_ids=position_ids,
                       use_cache=False, logits_to_keep=responses.shape[1] + 1).logits
        return core.logprobs_from_logits(logits[:, :-1], responses, self.args.temperature + 1e-7)

    @torch.no_grad()
    def score_rollout(self, queries: torch.Tensor, responses: torch.Tensor) -> dict[str, torch.Tensor]:
        """Log-probs under pi_SFT (the disabled adapter under LoRA), values and the normalised score r(x, y); in
        mixed precision also the rollout's log-probs under pi_RL, from the forward the PPO epochs repeat."""
        with self._autocast():
            return self._score_rollout(queries, responses)

    def _score_rollout(self, queries: torch.Tensor, responses: torch.Tensor) -> dict[str, torch.Tensor]:
        context_length = queries.shape[1]
        unwrapped = self._unwrapped()
        out = defaultdict(list)
        chunk = self.args.local_rollout_forward_batch_size
        for i in range(0, queries.shape[0], chunk):
            q, r = queries[i: i + chunk], responses[i: i + chunk]
            qr = torch.cat([q, r], dim=1)
            attention_mask = (qr != self.pad_token_id).long()
            position_ids = position_ids_from(attention_mask)
            if self.ref_model is None:
                with unwrapped.policy.disable_adapter():
                    ref = self._forward_logprobs(unwrapped.policy, qr, attention_mask, position_ids, r)
            else:
                ref = self._forward_logprobs(self.ref_model, qr, attention_mask, position_ids, r)
            out["ref_logprobs"].append(ref)
            if self.mixed_precision:
                out["logprobs"].append(
                    self._forward_logprobs(unwrapped.policy, qr, attention_mask, position_ids, r))
            values = compute_values(unwrapped.value_model, qr, attention_mask, position_ids)
            out["values"].append(values[:, context_length - 1: -1])
            out["scores"].append(reward_scores(self.reward_model, qr, attention_mask))
        return {k: torch.cat(v) for k, v in out.items()}

    def make_experience(self, queries: torch.Tensor) -> dict[str, torch.Tensor]:
        """One batch of episodes with everything the PPO epochs need (steps 1-3 of the module docstring)."""
        args = self.args
        responses, logprobs = self.generate_responses(queries)
        # Columns that are padding in every row change nothing (causal attention, masked losses, zero rewards and
        # values past the end): drop them, so scoring and the PPO epochs cost what the longest response costs.
        width = max(1, int((responses != self.pad_token_id).sum(1).max()))
        responses, logprobs = responses[:, :width], logprobs[:, :width]
        scored = self.score_rollout(queries, responses)
        if not self.mixed_precision:
            scored["logprobs"] = logprobs
        mask = responses != self.pad_token_id
        scores = scored["scores"]
        contains_stop = (responses == self.stop_token_id).any(-1) if self.stop_token_id is not None else None
        if args.missing_eos_penalty is not None and contains_stop is not None:
            scores = scores - args.missing_eos_penalty * (~contains_stop).float()
        scores = scores - core.short_response_penalty(mask.sum(-1), args.min_response_length,
                                                      args.short_response_penalty).to(scores.device)
        kl = core.kl_estimate(scored["logprobs"], scored["ref_logprobs"], args.kl_estimator) * mask
        rewards, non_score_rewards = core.per_token_rewards(scores, kl, self.kl_ctl.value, mask)
        if args.whiten_rewards:
            rewards = core.masked_whiten(rewards, mask, shift_mean=False)
        values = scored["values"] * mask
        advantages, returns = core.compute_gae(rewards, values, mask, args.gamma, args.lam)
        advantages = core.masked_whiten(advantages, mask)
        qr = torch.cat([queries, responses], dim=1)
        attention_mask = (qr != self.pad_token_id).long()
        return {
            "queries": queries, "responses": responses, "query_responses": qr, "attention_mask": attention_mask,
            "position_ids": position_ids_from(attention_mask), "mask": mask, "logprobs": scored["logprobs"],
            "ref_logprobs": scored["ref_logprobs"], "values": values, "scores": scores, "raw_scores": scored["scores"],
            "kl": kl, "non_score_rewards": non_score_rewards, "rewards": rewards, "advantages": advantages,
            "returns": returns,
        }

    # ------------------------------------------------------------------------------------------------------------
    # Optimisation
    # ------------------------------------------------------------------------------------------------------------
    def ppo_step(self, batch: dict[str, torch.Tensor], micro_step: int) -> dict[str, torch.Tensor]:
        """Loss of one micro-batch: clipped policy loss + vf_coef * clipped value loss + ptx_coef * ptx loss."""
        args = self.args
        context_length = batch["queries"].shape[1]
        ptx = self._ptx_batch(micro_step) or {}
        with self._autocast():
            logits, vpred, ptx_loss = self.model(batch["query_responses"], batch["attention_mask"],
                                                 batch["position_ids"], batch["responses"].shape[1] + 1, **ptx)
        # half-precision logits stay half: the log-softmax upcasts them to fp32 a chunk of positions at a time
        logits = logits[:, :-1]
        temperature = args.temperature + 1e-7
        new_logprobs = core.logprobs_from_logits(logits, batch["responses"], temperature)
        vpred = vpred[:, context_length - 1: -1]
        mask = batch["mask"]
        pg_loss, pg_stats = core.policy_loss(new_logprobs, batch["logprobs"], batch["advantages"], mask,
                                             args.cliprange)
        vf_loss, vf_clipfrac = core.value_loss(vpred, batch["values"], batch["returns"], mask, args.cliprange_value)
        loss = pg_loss + args.vf_coef * vf_loss
        if ptx_loss is not None:
            loss = loss + args.ptx_coef * ptx_loss
        if args.entropy_coef:
            entropy = core.masked_mean(core.entropy_from_logits(logits, temperature), mask)
            loss = loss - args.entropy_coef * entropy
            entropy = entropy.detach()
        with torch.no_grad():
            if not args.entropy_coef:
                entropy = core.masked_mean(core.entropy_from_logits(logits, temperature), mask)
            ratio = torch.exp(new_logprobs - batch["logprobs"])
            ratio_var = core.masked_var(ratio, mask)
        return {
            "loss": loss, "pg_loss": pg_loss.detach(), "vf_loss": vf_loss.detach(), "approxkl": pg_stats["approxkl"],
            "clipfrac": pg_stats["clipfrac"], "ratio": pg_stats["ratio"], "ratio_var": ratio_var,
            "vf_clipfrac": vf_clipfrac, "entropy": entropy,
            "ptx_loss": ptx_loss.detach() if ptx_loss is not None else torch.zeros((), device=loss.device),
        }

    def _check_finite(self, name: str, value: torch.Tensor) -> bool:
        if torch.isfinite(value).all():
            return True
        message = (f"Non-finite {name} at PPO update {self.state.global_step + 1} (episode {self.state.episode}). "
                   "The last complete checkpoint is kept; lower the learning rate or set `non_finite: skip`.")
        if self.args.non_finite == "stop":
            raise NonFiniteError(message)
        logger.warning("%s Skipping this batch.", message)
        return False

    def _fused_torch_optimizer(self) -> torch.optim.Optimizer | None:
        """The torch optimizer when it is a fused Adam(W) that can skip a step on a device-side flag (`found_inf`,
        the mechanism of torch's GradScaler), so non-finite losses need no host sync; None otherwise."""
        if self.is_deepspeed_enabled or getattr(self.accelerator, "scaler", None) is not None:
            return None
        inner = getattr(self.optimizer, "optimizer", self.optimizer)
        fused = isinstance(inner, torch.optim.Adam) and all(g.get("fused") for g in inner.param_groups)
        return inner if fused else None

    def optimise(self, experience: dict[str, torch.Tensor], update: int) -> dict[str, float] | None:
        """num_ppo_epochs passes over freshly shuffled minibatches; returns averaged statistics.

        Nothing in the loop waits for the device: statistics stay tensors, and with a fused AdamW a non-finite loss
        makes the optimizer skip its step through a device-side flag; the one check is after the loop. (Other
        optimizers and DeepSpeed check each micro-batch's loss before its backward.)
        """
        args = self.args
        local_bs, mini_bs = self.sizes["local_batch_size"], self.sizes["local_mini_batch_size"]
        micro_bs = args.per_device_train_batch_size
        keys = ("query_responses", "attention_mask", "position_ids", "responses", "mask", "logprobs", "values",
                "advantages", "returns", "queries")
        stats = defaultdict(list)
        micro_step = update * args.num_ppo_epochs * (local_bs // micro_bs)
        fused = self._fused_torch_optimizer()
        device = experience["responses"].device
        step_bad = torch.zeros((), dtype=torch.float32, device=device)
        self.model.train()
        try:
            for _ in range(args.num_ppo_epochs):
                permutation = torch.randperm(local_bs, device=device)
                for mb_start in range(0, local_bs, mini_bs):
                    minibatch = permutation[mb_start: mb_start + mini_bs]
                    for micro_start in range(0, mini_bs, micro_bs):
                        idx = minibatch[micro_start: micro_start + micro_bs]
                        micro = {k: experience[k][idx] for k in keys}
                        with self.accelerator.accumulate(self.model):
                            out = self.ppo_step(micro, micro_step)
                            micro_step += 1
                            if fused is None and not self._check_finite("loss", out["loss"]):
                                self.optimizer.zero_grad()
                                return None
                            self.accelerator.backward(out["loss"])
                            if fused is not None:
                                step_bad = torch.maximum(step_bad, (~torch.isfinite(out["loss"].detach())).float())
                                fused.found_inf = step_bad  # read by the fused kernel: skip this step if set
                            if self.accelerator.sync_gradients and args.max_grad_norm:
                                self.accelerator.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
                            self.optimizer.step()
                            self.optimizer.zero_grad()
                            if self.accelerator.sync_gradients:
                                step_bad = torch.zeros_like(step_bad)
                        for k, v in out.items():
                            stats[k].append(v.detach().float())
        finally:
            if fused is not None and hasattr(fused, "found_inf"):
                del fused.found_inf
            self.model.eval()
        if fused is not None and not self._check_finite("loss", torch.stack(stats["loss"])):
            return None  # the non-finite steps were skipped on the device; the batch's statistics are dropped
        return {k: torch.stack(v).mean() for k, v in stats.items()}

    # ------------------------------------------------------------------------------------------------------------
    # The loop
    # ------------------------------------------------------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | None = None, **_) -> TrainerState:
        args = self.args
        num_updates = args.num_total_batches(self.accelerator.num_processes, len(self.train_dataset))
        self._setup(num_updates)
        self.state = TrainerState(stateful_callbacks=[
            cb for cb in self.callback_handler.callbacks + [self.control] if isinstance(cb, ExportableState)])
        self.state.max_steps = num_updates
        self.state.num_train_epochs = 1
        self.state.logging_steps, self.state.save_steps = args.logging_steps, args.save_steps
        self.state.episode = 0
        self.state.is_local_process_zero = self.is_local_process_zero()
        self.state.is_world_process_zero = self.is_world_process_zero()
        start_update = 0
        if resume_from_checkpoint:
            start_update = self._resume(resume_from_checkpoint)
        sample_every = max(1, num_updates // max(1, args.num_sample_generations))
        self.control = self.callback_handler.on_train_begin(args, self.state, self.control)
        start_time = time.time()
        for update in range(start_update, num_updates):
            self.control = self.callback_handler.on_step_begin(args, self.state, self.control)
            t0 = time.time()
            with torch.no_grad():
                queries = self._prompt_batch(update)
                self.model.eval()
                experience = self.make_experience(queries)
            t1 = time.time()
            healthy = all(self._check_finite(name, experience[name]) for name in ("scores", "kl"))
            stats = self.optimise(experience, update) if healthy else None
            t2 = time.time()
            self.state.global_step += 1
            self.state.episode += self.sizes["batch_size"]
            self.state.epoch = self.state.global_step / num_updates
            lr = self.lr_scheduler.get_last_lr()[0]  # the rate this update used
            self.lr_scheduler.step()
            if stats is not None:
                metrics = self._metrics(experience, stats)
                metrics["lr"] = lr
                metrics.update({"time/rollout_s": t1 - t0, "time/optimise_s": t2 - t1})
                self.kl_ctl.update(metrics["objective/kl"], self.sizes["batch_size"])
                if self.state.global_step % max(1, args.logging_steps) == 0 or self.state.global_step == 1:
                    self.log(metrics)
                if self.state.global_step % sample_every == 0 and self.is_world_process_zero():
                    self._print_samples(experience)
            self.control = self.callback_handler.on_step_end(args, self.state, self.control)
            if self.control.should_save:
                self._save_checkpoint(self.model, trial=None)
                self.control = self.callback_handler.on_save(args, self.state, self.control)
            if self.control.should_training_stop:
                break
        self.state.train_runtime = time.time() - start_time
        self.control = self.callback_handler.on_train_end(args, self.state, self.control)
        return self.state

    def _metrics(self, exp: dict[str, torch.Tensor], stats: dict[str, torch.Tensor]) -> dict[str, float]:
        """TRL's PPO metric names, averaged over processes; pads are excluded from every statistic."""
        mask = exp["mask"]
        gather = self.accelerator.gather_for_metrics
        mean_kl = exp["kl"].sum(1).mean()
        non_score = exp["non_score_rewards"].sum(1).mean()
        entropy = (-exp["logprobs"] * mask).sum(1).mean()
        local = {
            "objective/kl": mean_kl,
            "objective/entropy": entropy,
            "objective/non_score_reward": non_score,
            "objective/rlhf_reward": exp["scores"].mean() + non_score,
            "objective/scores": exp["scores"].mean(),
            "policy/approxkl_avg": stats["approxkl"],
            "policy/clipfrac_avg": stats["clipfrac"],
            "loss/policy_avg": stats["pg_loss"],
            "loss/value_avg": stats["vf_loss"],
            "loss/ptx": stats["ptx_loss"],
            "val/clipfrac_avg": stats["vf_clipfrac"],
            "policy/entropy_avg": stats["entropy"],
            "val/ratio": stats["ratio"],
            "val/ratio_var": stats["ratio_var"],
            "val/mean_response_length": mask.sum(1).float().mean(),
        }
        names = list(local)
        values = gather(torch.stack([local[n].float() for n in names])[None]).mean(0)
        metrics = {n: v.item() for n, v in zip(names, values)}
        if self.stop_token_id is not None:
            metrics["val/num_eos_tokens"] = gather((exp["responses"] == self.stop_token_id).sum()[None]).sum().item()
        metrics["objective/kl_coef"] = float(self.kl_ctl.value)
        metrics["episode"] = self.state.episode
        return metrics

    def _print_samples(self, exp: dict[str, torch.Tensor], rows: int = 4) -> None:
        decode = self.processing_class.batch_decode
        prompts = decode(exp["queries"][:rows], skip_special_tokens=True)
        responses = decode(exp["responses"][:rows], skip_special_tokens=True)
        lines = [f"--- samples at update {self.state.global_step} (score | prompt | response) ---"]
        for prompt, response, score in zip(prompts, responses, exp["scores"][:rows].tolist()):
            lines.append(f"{score:+.3f} | {prompt[-60:]!r} | {response!r}")
        print("\n".join(lines))

    # ------------------------------------------------------------------------------------------------------------
    # Saving and resuming
    # ------------------------------------------------------------------------------------------------------------
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the policy (full model, or the LoRA adapter) with the tokenizer, and the value model beside it."""
        output_dir = output_dir or self.args.output_dir
        state_dict = self.accelerator.get_state_dict(self.model)
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        unwrapped = self._unwrapped()
        for prefix, module, folder in (("policy.", unwrapped.policy, output_dir),
                                       ("value_model.", unwrapped.value_model, os.path.join(output_dir,
                                                                                            VALUE_MODEL_DIR))):
            sub = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
            module.save_pretrained(folder, state_dict=sub, safe_serialization=True)
        self.processing_class.save_pretrained(output_dir)
        (Path(output_dir) / PPO_STATE_FILE).write_text(json.dumps(
            {"kl_controller": self.kl_ctl.state_dict(), "episode": self.state.episode}, indent=2) + "\n")

    def _resume(self, checkpoint: str) -> int:
        """Restore weights, optimizer, scheduler, KL controller, trainer state and RNG; return the next update."""
        if self.is_deepspeed_enabled:
            from transformers.integrations.deepspeed import deepspeed_load_checkpoint

            deepspeed_load_checkpoint(self.model_wrapped, checkpoint, load_module_strict=False)
            # The engine restores the optimizer only: our scheduler is not DeepSpeed's, so load it from
            # scheduler.pt (under DeepSpeed, Trainer's loader reads just the scheduler).
            self._load_optimizer_and_scheduler(checkpoint)
        else:
            unwrapped = self._unwrapped()
            _load_weights(unwrapped.policy, checkpoint)
            _load_weights(unwrapped.value_model, os.path.join(checkpoint, VALUE_MODEL_DIR))
            self._load_optimizer_and_scheduler(checkpoint)
        self.state = TrainerState.load_from_json(os.path.join(checkpoint, "trainer_state.json"))
        self.state.is_local_process_zero = self.is_local_process_zero()
        self.state.is_world_process_zero = self.is_world_process_zero()
        ppo_state = json.loads((Path(checkpoint) / PPO_STATE_FILE).read_text())
        self.kl_ctl.load_state_dict(ppo_state["kl_controller"])
        self.state.episode = ppo_state["episode"]
        self._load_rng_state(checkpoint)
        logger.info("Resumed from %s at update %d.", checkpoint, self.state.global_step)
        return self.state.global_step


def _load_weights(module: nn.Module, folder: str) -> None:
    """Load safetensors weights saved by `save_model` into a live (possibly LoRA) module."""
    from safetensors.torch import load_file

    folder = Path(folder)
    adapter = folder / "adapter_model.safetensors"
    if adapter.is_file():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(module, load_file(adapter))
        return
    files = sorted(folder.glob("model*.safetensors"))
    if not files:
        raise FileNotFoundError(f"No safetensors weights in {folder}: the checkpoint is incomplete.")
    state = {}
    for file in files:
        state.update(load_file(file))
    missing, unexpected = module.load_state_dict(state, strict=False)
    tied = set(getattr(module, "_tied_weights_keys", None) or [])
    real_missing = [k for k in missing if k not in tied and "lm_head" not in k]
    if real_missing or unexpected:
        raise RuntimeError(f"Checkpoint {folder} does not match the model: missing {real_missing[:5]}, "
                           f"unexpected {unexpected[:5]}")

