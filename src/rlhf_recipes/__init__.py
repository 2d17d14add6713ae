"""rlhf-recipes: InstructGPT's SFT, reward-model and PPO-ptx stages for GPT-2-family models."""

import logging

__version__ = "0.1.0"


class _QuietBitsandbytesKernelLookup(logging.Filter):
    """Drop bitsandbytes' notice that its optional Hub kernel for CPU 4-bit matmuls could not be loaded.

    `transformers` imports `peft` whenever it is installed, `peft` imports `bitsandbytes`, and bitsandbytes' CPU
    backend (on CPUs with AVX512-BF16) asks `kernels` for `kernels-community/quantization-bitsandbytes` at import
    time. Offline, or with no cached kernel, it logs two warnings and falls back to its own CPU code, which is what
    4-bit on CPU then uses anyway; a command that does not quantise has nothing to learn from them.
    """

    NOTICES = ("Failed to load CPU gemm_4bit_forward from kernels-community",
               "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.NOTICES)


for _name in ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub"):
    logging.getLogger(_name).addFilter(_QuietBitsandbytesKernelLookup())
