"""`PPOConfig`: TRL's last `PPOConfig` field names (v1.12, `trl.experimental.ppo`), plus PPO-ptx and adaptive KL.

Batch arithmetic, as in TRL: one PPO *update* generates `batch_size` episodes, where

    local_batch_size = per_device_train_batch_size * gradient_accumulation_steps * num_mini_batches
    batch_size       = local_batch_size * world_size
    mini_batch_size  = batch_size / num_mini_batches   (one optimizer step each)

and runs `num_ppo_epochs` passes over them. `total_episodes` fixes the number of updates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import TrainingArguments

from ..hub import HubPushArguments


def cpu_has_amx_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """True when the CPU has AMX bf16 tiles (Intel Sapphire Rapids and later), where bf16 matmuls run several
    times faster than fp32 ones; False elsewhere (no such flag, or no /proc/cpuinfo)."""
    try:
        return "amx_bf16" in Path(cpuinfo).read_text().split()
    except OSError:
        return False


def cpu_kernels_avx512() -> bool:
    """True when torch's CPU kernels run with AVX512, which its bf16 kernels need to use AMX tiles: with the kernels
    forced to AVX2 (ATEN_CPU_CAPABILITY=avx2) bf16 attention fails ("pack_vnni2 is only supported when avx512 is
    supported"), so bf16 autocast stays off there even on an AMX CPU."""
    return torch.backends.cpu.get_cpu_capability().upper().startswith("AVX512")


def _accelerator_available() -> bool:
    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available()) or \
        torch.backends.mps.is_available()


@dataclass
class PPOConfig(HubPushArguments, TrainingArguments):
    # ---- TRL's PPOConfig / OnPolicyConfig fields (same names, same meaning) ----
    sft_model_path: str = field(default=None, metadata={"role": "policy",
        "help": "The SFT policy pi_SFT: start and KL reference."})
    reward_model_path: str = field(default=None, metadata={"role": "reward",
        "help": "The reward model r(x, y) (frozen)."})
    num_ppo_epochs: int = field(default=4, metadata={"range": "[1, inf)",
        "help": "Passes over each batch of episodes."})
    num_mini_batches: int = field(default=1, metadata={"range": "[1, inf)",
        "help": "Minibatches (optimizer steps) per PPO epoch."})
    total_episodes: int | None = field(default=None, metadata={"range": "[1, inf)",
        "help": "Episodes to train on (default: one epoch)."})
    local_rollout_forward_batch_size: int = field(
        default=64, metadata={"range": "[1, inf)",
            "help": "Sequences per forward pass while generating and scoring rollouts."}
    )
    num_sample_generations: int = field(
        default=10, metadata={"range": "[0, inf)",
            "help": "How many times to print a table of sample responses during training."}
    )
    response_length: int = field(default=53, metadata={"range": "[1, inf)",
        "help": "Maximum new tokens per response."})
    stop_token: str | None = field(
        default="eos", metadata={"choices": ["eos"],
            "help": "'eos' stops responses at the EOS token (then truncates and pads)."}
    )
    stop_token_id: int | None = field(default=None, metadata={"range": "[0, inf)",
        "help": "Stop token id (overrides stop_token)."})
    temperature: float = field(default=0.7, metadata={"range": "(0, inf)",
        "help": "Sampling temperature, applied in every forward."})
    missing_eos_penalty: float | None = field(
        default=None, metadata={"range": "[0, inf)",
            "help": "Subtracted from the score of a response that never emitted EOS."}
    )
    kl_coef: float = field(default=0.05, metadata={"range": "[0, inf)",
        "help": "beta, the KL penalty coefficient (initial if adaptive)."})
    kl_estimator: str = field(
        default="k1", metadata={"help": "Per-token KL estimator: k1 (log ratio) or k3 (unbiased, non-negative).",
                                "choices": ["k1", "k3"]}
    )
    cliprange: float = field(default=0.2, metadata={"range": "(0, inf)",
        "help": "PPO clip range epsilon for the policy ratio."})
    cliprange_value: float = field(default=0.2, metadata={"range": "(0, inf)",
        "help": "Clip range for the value function."})
    vf_coef: float = field(default=0.1, metadata={"range": "[0, inf)", "help": "Value loss weight."})
    gamma: float = field(default=1.0, metadata={"range": "[0, 1]", "help": "Discount factor (GAE)."})
    lam: float = field(default=0.95, metadata={"range": "[0, 1]", "help": "GAE lambda."})
    whiten_rewards: bool = field(default=False, metadata={"help": "Whiten per-token rewards before GAE."})
    ds3_gather_for_generation: bool = field(
        default=True, metadata={"help": "Gather ZeRO-3 shards for generation (fast; needs memory for the policy)."}
    )
    model_adapter_name: str | None = field(default=None, metadata={"help": "Unused; kept for TRL compatibility."})
    ref_adapter_name: str | None = field(default=None, metadata={"help": "Unused; kept for TRL compatibility."})

    # ---- Ours ----
    value_model_path: str | None = field(
        default=None, metadata={"role": "value",
            "help": "Value function init (default: the reward model, as in InstructGPT)."}
    )
    policy_model_path: str | None = field(
        default=None, metadata={"role": "policy",
            "help": "Start the policy from this checkpoint instead of sft_model_path (the data "
                    "loop continues from its last policy); the KL reference stays pi_SFT."}
    )
    target_kl: float | None = field(
        default=None, metadata={"range": "(0, inf)",
            "help": "Adaptive KL controller target (Ziegler et al. 2019); off when unset."}
    )
    kl_horizon: int = field(default=10000, metadata={"range": "[1, inf)",
        "help": "Adaptive KL controller horizon, in episodes."})
    entropy_coef: float = field(
        default=0.0, metadata={"range": "[0, inf)",
            "help": "Weight of the policy's mean token entropy, subtracted from the loss (a bonus)."}
    )
    min_response_length: int = field(
        default=0, metadata={"range": "[0, inf)",
            "help": "Responses shorter than this many tokens lose `short_response_penalty` * the "
                    "missing fraction from their score (0: off)."}
    )
    short_response_penalty: float = field(default=1.0, metadata={"range": "[0, inf)",
        "help": "See `min_response_length`."})
    ptx_coef: float = field(default=0.0, metadata={"range": "[0, inf)",
        "help": "gamma of PPO-ptx: weight of the pretraining loss."})
    ptx_dataset: str | None = field(
        default=None, metadata={"help": "Pretraining or SFT text for PPO-ptx (Hub id or local file)."}
    )
    ptx_batch_size: int = field(
        default=4, metadata={"range": "[1, inf)",
            "help": "ptx sequences per micro-batch, added to the same optimizer step."}
    )
    ptx_max_length: int = field(default=128, metadata={"range": "[1, inf)", "help": "Token length of ptx sequences."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the Hub."})
    auto_bf16: bool = field(
        default=False, metadata={"help": "Decide bf16 from the hardware: on with a bf16-capable GPU or, without one, "
                                         "a CPU with AMX bf16; fp32 otherwise (overrides `bf16`)."}
    )
    generation_backend: str = field(
        default="generate", metadata={
            "help": "How rollouts are sampled: 'generate' (transformers' generate, dynamic KV cache; any model), "
                    "'static' (our decode loop over a static KV cache, no host-device sync per token) or 'compile' "
                    "(static + torch.compile'd decode step; CUDA graphs on a GPU).",
            "choices": ["generate", "static", "compile"]}
    )
    non_finite: str = field(
        default="stop", metadata={"help": "A NaN/inf loss, score or KL: 'stop' the run, or 'skip' the batch.",
                                  "choices": ["stop", "skip"]}
    )

    def __post_init__(self) -> None:
        from ..ranges import check_arguments

        check_arguments(self)  # the declared ranges and cross-field rules, also for a config built in code
        if self.auto_bf16 and not self.fp16:
            accelerator = _accelerator_available() and not self.use_cpu
            self.bf16 = torch.cuda.is_bf16_supported() if accelerator and torch.cuda.is_available() else (
                not accelerator and cpu_has_amx_bf16() and cpu_kernels_avx512())
        if self.bf16 and not self.use_cpu and not _accelerator_available():
            self.use_cpu = True  # bf16 autocast on the CPU (TrainingArguments refuses bf16 without a GPU otherwise)
        super().__post_init__()

    # TRL's derived batch sizes, computed from the world size at run time.
    def batch_sizes(self, world_size: int) -> dict[str, int]:
        local_batch_size = self.per_device_train_batch_size * self.gradient_accumulation_steps * self.num_mini_batches
        batch_size = local_batch_size * world_size
        return {
            "local_batch_size": local_batch_size,
            "batch_size": batch_size,
            "mini_batch_size": batch_size // self.num_mini_batches,
            "local_mini_batch_size": local_batch_size // self.num_mini_batches,
        }

    def num_total_batches(self, world_size: int, num_prompts: int) -> int:
        total = self.total_episodes if self.total_episodes is not None else int(num_prompts * self.num_train_epochs)
        return math.ceil(total / self.batch_sizes(world_size)["batch_size"])
