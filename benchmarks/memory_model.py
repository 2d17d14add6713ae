"""Back-of-the-envelope GPU memory of each stage for the GPT-2 sizes, under each option: the arithmetic behind
`docs/scaling.md` (run it to regenerate the tables there).

    python benchmarks/memory_model.py            # Markdown tables
    python benchmarks/memory_model.py --check    # compare with the measured CPU peaks in benchmarks/results/

Bytes per parameter (Psi = parameters of one model):
  trained, bf16 weights + torch AdamW (this repo's gpt2 recipes: `dtype: bfloat16`, `bf16: true`, no DeepSpeed):
      2 (weights) + 2 (grads) + 4 (Adam m, v in the weights' dtype)                       =  8
  trained, DeepSpeed bf16 (fp32 master weights and Adam, Rajbhandari et al. 2020), over N GPUs:
      ZeRO-1: 2 + 2 + 12/N     ZeRO-2: 2 + (2 + 12)/N     ZeRO-3: (2 + 2 + 12)/N
      + offload_optimizer: the 12 (fp32 master + Adam) go to CPU memory; + offload_param (ZeRO-3): weights too
  trained, fp32 weights (the CPU benchmark): 4 + 4 + 8 = 16
  frozen: 2 (bf16), 4 (fp32), ~0.55 (NF4: 4 bits + block scales; embeddings and norms stay 16-bit)
  LoRA: the base is frozen; adapters (r=16 on c_attn: 2 * r * (d + 3d) per layer) train at 16 B/param

PPO holds four networks: policy and value trained, reference and reward frozen. With LoRA the reference is the
policy with its adapter disabled (no copy) and the value model is LoRA on its own frozen base, so: 3 frozen
bases + adapters. Activations (bf16, per sequence of s tokens, per layer, Korthikanti et al. 2022 with SDPA so no
s^2 term): 34 * s * d bytes; gradient checkpointing keeps 2 * s * d per layer plus one layer's full set. Logits:
V * 10 bytes per position that has them, per sequence in a backward pass (bf16 logits, the fp32 copy for
log-softmax and its gradient): every position in SFT, only the response's (+1) in PPO, whose forwards pass
`logits_to_keep`.
"""

from __future__ import annotations

import argparse

GIB = 2**30
SIZES = {  # GPT-2 family: layers, width, parameters (vocab 50257 + pad, 1024 positions, tied LM head)
    "124M": (12, 768, 124.4e6),
    "355M": (24, 1024, 354.8e6),
    "774M": (36, 1280, 774.0e6),
    "1.5B": (48, 1600, 1557.6e6),
}
VOCAB = 50258
GPUS = (24, 40, 80)
OVERHEAD_GIB = 1.5  # CUDA context, allocator fragmentation, communication buffers


def lora_params(layers: int, width: int, r: int = 16) -> float:
    return layers * 2 * r * (width + 3 * width)  # c_attn: d -> 3d


def activations(layers: int, width: int, seqs: int, seq_len: int, checkpointing: bool, logit_positions: int) -> float:
    per_layer = 34 * seq_len * width * seqs
    act = (layers * 2 * seq_len * width * seqs + per_layer) if checkpointing else layers * per_layer
    return act + seqs * logit_positions * VOCAB * 10


def trained_bytes(psi: float, option: str, n_gpus: int) -> float:
    if option == "bf16":
        return 8 * psi
    if option == "zero1":
        return (4 + 12 / n_gpus) * psi
    if option == "zero2":
        return (2 + 14 / n_gpus) * psi
    if option == "zero2+offload":
        return (2 + 2 / n_gpus) * psi
    if option == "zero3":
        return 16 / n_gpus * psi
    if option == "zero3+offload":
        return 2 / n_gpus * psi  # only the bf16 gradient shard stays; weights are gathered layer by layer
    raise ValueError(option)


def stage_memory(size: str, stage: str, method: str, option: str = "bf16", n_gpus: int = 1,
                 checkpointing: bool = False, micro_batch: int = 8, seq_len: int = 512,
                 response_len: int = 128) -> float:
    """Peak bytes on one GPU, roughly."""
    layers, width, psi = SIZES[size]
    frozen_bytes = 0.55 if method == "qlora" else 2.0
    if method == "full":
        trained = trained_bytes(psi, option, n_gpus)
        frozen_bases = 0.0
    else:
        trained = 16 * lora_params(layers, width)
        frozen_bases = frozen_bytes * psi
    if stage == "sft":
        weights = trained + frozen_bases
        act = activations(layers, width, micro_batch, seq_len, checkpointing, logit_positions=seq_len)
    elif stage == "rm":
        weights = trained + frozen_bases
        act = activations(layers, width, 2 * micro_batch, seq_len, checkpointing, logit_positions=0)
    else:  # ppo: policy + value trained; reference + reward frozen (LoRA: reference = policy base)
        frozen_models = 2 * psi * (2 / n_gpus if option.startswith("zero3") else 2)
        if method == "full":
            weights = 2 * trained + frozen_models
        else:
            weights = 2 * trained + 3 * frozen_bases  # policy base (= reference), value base, reward
        act = (activations(layers, width, micro_batch, seq_len, checkpointing, logit_positions=response_len + 1)
               + activations(layers, width, micro_batch, seq_len, checkpointing, logit_positions=0))
    return weights + act + OVERHEAD_GIB * GIB


def smallest_gpu(nbytes: float) -> str:
    for gpu in GPUS:
        if nbytes <= gpu * GIB:
            return f"{gpu} GB"
    return "> 80 GB"


def tables() -> str:
    out = []
    configs = [("full", "bf16", 1, False), ("full", "bf16", 1, True), ("lora", "bf16", 1, False),
               ("lora", "bf16", 1, True), ("qlora", "bf16", 1, True), ("full", "zero2", 8, False),
               ("full", "zero3", 8, False), ("full", "zero3", 8, True), ("full", "zero3+offload", 8, True)]
    labels = {("full", "bf16", 1, False): "full, 1 GPU", ("full", "bf16", 1, True): "full + grad. ckpt, 1 GPU",
              ("lora", "bf16", 1, False): "LoRA, 1 GPU", ("lora", "bf16", 1, True): "LoRA + ckpt, 1 GPU",
              ("qlora", "bf16", 1, True): "QLoRA + ckpt, 1 GPU",
              ("full", "zero2", 8, False): "full, ZeRO-2 x8", ("full", "zero3", 8, False): "full, ZeRO-3 x8",
              ("full", "zero3", 8, True): "full, ZeRO-3 + ckpt x8",
              ("full", "zero3+offload", 8, True): "full, ZeRO-3 + offload + ckpt x8"}
    for stage, micro, seq in (("sft", 8, 512), ("rm", 8, 512), ("ppo", 16, 640)):
        header = ["option"] + [f"{s}" for s in SIZES]
        rows = []
        for method, option, n, ckpt in configs:
            cells = []
            for size in SIZES:
                gib = stage_memory(size, stage, method, option, n, ckpt, micro, seq) / GIB
                cells.append(f"{gib:.1f} GiB ({smallest_gpu(gib * GIB)})")
            rows.append([labels[(method, option, n, ckpt)], *cells])
        title = {"sft": f"SFT, micro-batch {micro} x {seq} tokens",
                 "rm": f"Reward model, micro-batch {micro} pairs ({2 * micro} sequences) x {seq} tokens",
                 "ppo": f"PPO, micro-batch {micro} x {seq} tokens (prompt + 128-token response)"}[stage]
        out.append(f"**{title}** (per GPU; smallest of 24/40/80 GB that holds it)\n")
        out.append("| " + " | ".join(header) + " |\n| " + " | ".join("---" for _ in header) + " |")
        out.extend("| " + " | ".join(r) + " |" for r in rows)
        out.append("")
    return "\n".join(out)


def check() -> str:
    """fp32 weights on CPU, as the benchmark runs: the model's weight + optimizer bytes for the 124M PPO cases."""
    layers, width, psi = SIZES["124M"]
    full = (2 * 16 * psi + 2 * 4 * psi) / GIB
    lora = (2 * 16 * lora_params(layers, width) + 3 * 4 * psi) / GIB
    return (f"124M PPO, fp32 weights: full = 2 x 16 B x Psi (policy, value) + 2 x 4 B x Psi (reference, reward) = "
            f"{full:.2f} GiB; LoRA = 3 x 4 B x Psi + adapters = {lora:.2f} GiB; ratio {lora / full:.2f} (before "
            "activations and the ~0.5 GiB of the Python process and libraries).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    print(check() if args.check else tables())


if __name__ == "__main__":
    main()
