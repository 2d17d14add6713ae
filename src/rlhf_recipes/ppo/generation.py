"""PPO's rollout sampler: a decode loop over a static KV cache, optionally with a `torch.compile`d decode step.

`PPOConfig.generation_backend` picks how responses are sampled:

* ``generate`` (default): transformers' `generate` with its dynamic KV cache. Works with every model the loader
  makes (4/8-bit, DeepSpeed ZeRO-3 gathered weights, any architecture).
* ``static``: `sample_static` below. The KV cache is preallocated for the whole (bucketed) sequence, every decode step
  has the same shapes, and the loop never asks the device anything: finished rows keep decoding into pads, the stop
  decision is made on tensors, and the loop runs `max_new_tokens` steps on an accelerator (on a CPU, where reading a
  flag costs nothing, it stops when every row has finished).
* ``compile``: ``static`` with the decode step under `torch.compile` (``mode="reduce-overhead"``, i.e. CUDA graphs,
  on a GPU). Shapes are bucketed (prompt width to a multiple of `BUCKET`) so a run compiles a handful of graphs.

Sampling is PPO's: ``top_k=0``, ``top_p=1``, softmax of ``logits / temperature`` in float32, one `torch.multinomial`
per step, so with the same RNG state and the same logits it draws what `generate` draws.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

BACKENDS = ("generate", "static", "compile")
BUCKET = 16  # prompt widths are padded (on the left) to a multiple of this, so compiled shapes repeat


def _left_pad_to(queries: torch.Tensor, mask: torch.Tensor, width: int, pad_id: int):
    extra = width - queries.shape[1]
    if extra <= 0:
        return queries, mask
    return (torch.nn.functional.pad(queries, (extra, 0), value=pad_id),
            torch.nn.functional.pad(mask, (extra, 0), value=0))


class StaticSampler:
    """Samples responses from `model` over a `StaticCache`; holds the compiled decode step between calls."""

    def __init__(self, compile_step: bool = False) -> None:
        self.compile_step = compile_step
        self._compiled: dict[int, Callable] = {}

    def _step_fn(self, model: nn.Module) -> Callable:
        def step(tokens, attention_mask, position_ids, cache):
            return model(input_ids=tokens, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                         use_cache=True).logits[:, -1]

        if not self.compile_step:
            return step
        key = id(model)
        if key not in self._compiled:
            mode = "reduce-overhead" if next(model.parameters()).is_cuda else None
            self._compiled[key] = torch.compile(step, mode=mode, fullgraph=False, dynamic=False)
        return self._compiled[key]

    @torch.no_grad()
    def __call__(self, model: nn.Module, queries: torch.Tensor, *, max_new_tokens: int, temperature: float,
                 pad_token_id: int, stop_token_id: int | None, want_logprobs: bool = True
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Responses ``[B, max_new_tokens]`` (pad after the stop token) and their log-probs (fp32, 0 at pads).

        `temperature` is the divisor actually used (PPO adds 1e-7). `queries` are left-padded prompts.
        """
        from transformers import StaticCache

        batch, width = queries.shape
        device = queries.device
        prompt_mask = (queries != pad_token_id).long()
        if self.compile_step:  # repeatable shapes: one graph per (batch, bucket)
            queries, prompt_mask = _left_pad_to(queries, prompt_mask, -(-width // BUCKET) * BUCKET, pad_token_id)
            width = queries.shape[1]
        total = width + max_new_tokens
        config = getattr(model, "config", None) or model.get_base_model().config
        cache = StaticCache(config=config, max_cache_len=total)
        # The mask covers the whole cache from the start: future slots are excluded by causality, not by the mask,
        # so the mask never changes inside the loop.
        attention_mask = torch.cat([prompt_mask, prompt_mask.new_ones(batch, max_new_tokens)], dim=1)
        positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=queries, attention_mask=attention_mask, position_ids=positions, cache=cache,
                       use_cache=True, logits_to_keep=1).logits[:, -1]
        next_position = positions[:, -1:] + 1
        step = self._step_fn(model)

        responses = torch.full((batch, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
        logprobs = torch.zeros((batch, max_new_tokens), dtype=torch.float32, device=device) if want_logprobs else None
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        on_host = device.type == "cpu"
        for t in range(max_new_tokens):
            scaled = logits.float() / temperature
            token = torch.multinomial(torch.softmax(scaled, dim=-1), num_samples=1).squeeze(1)
            token = torch.where(finished, torch.full_like(token, pad_token_id), token)
            responses[:, t] = token
            if want_logprobs:
                logprobs[:, t] = torch.log_softmax(scaled, dim=-1).gather(-1, token[:, None]).squeeze(1)
            if stop_token_id is not None:
                finished = finished | (token == stop_token_id)
                if on_host and t + 1 < max_new_tokens and bool(finished.all()):  # free on a CPU; never on a GPU
                    break
            if t + 1 < max_new_tokens:
                logits = step(token[:, None], attention_mask, next_position + t, cache)
        return responses, logprobs
