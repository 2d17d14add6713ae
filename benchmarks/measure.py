"""What every benchmark process measures: step times, tokens, peak memory, and the device's peak FLOP/s.
Works with any `transformers.Trainer` (our recipes and TRL's GRPOTrainer are measured the same way).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch
from transformers import TrainerCallback


def sync() -> None:
    """Wait for queued GPU work, so that a wall-clock reading covers it."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def now() -> float:
    sync()
    return time.perf_counter()


def peak_memory() -> dict[str, float]:
    """Peak resident set size of this process (MiB) and, on a GPU, the peak of torch's allocator (MiB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mib = rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux
    out = {"peak_rss_mib": round(rss_mib, 1)}
    if torch.cuda.is_available():
        out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def count_tokens(inputs: dict) -> tuple[int, int]:
    """(real tokens, padded tokens) of a training batch: attention-mask ones, and the size of `input_ids`.
    (0, 0) for batches that are not a dict of tensors (GRPO's raw prompt rows: it counts its own tokens)."""
    if not isinstance(inputs, dict):
        return 0, 0
    input_ids = inputs.get("input_ids")
    padded = int(input_ids.numel()) if input_ids is not None else 0
    mask = inputs.get("attention_mask")
    real = int(mask.sum().item()) if mask is not None else padded
    return real, padded


class StepTimer(TrainerCallback):
    """Wall-clock time of every optimizer step (PPO: every update), and the tokens trained on in each.

    Steady-state throughput ignores the first `warmup` steps: `steady(...)` = work of steps warmup+1..N divided by
    the time from the end of step `warmup` to the end of step N.
    """

    def __init__(self) -> None:
        self.step_ends: list[float] = []
        self.cpu_ends: list[float] = []  # process CPU time: robust to other jobs on a shared machine
        self.tokens: list[int] = []
        self.padded_tokens: list[int] = []
        self._tokens = self._padded = 0
        self.train_begin: float | None = None
        self.cpu_begin: float | None = None

    def add_batch(self, inputs: dict) -> None:
        real, padded = count_tokens(inputs)
        self._tokens += real
        self._padded += padded

    def on_train_begin(self, args, state, control, **kwargs):
        self.train_begin = now()
        self.cpu_begin = time.process_time()

    def on_step_end(self, args, state, control, **kwargs):
        self.step_ends.append(now())
        self.cpu_ends.append(time.process_time())
        self.tokens.append(self._tokens)
        self.padded_tokens.append(self._padded)
        self._tokens = self._padded = 0

    def step_times(self) -> list[float]:
        starts = [self.train_begin, *self.step_ends[:-1]]
        return [end - start for start, end in zip(starts, self.step_ends)]

    def step_cpu_times(self) -> list[float]:
        """CPU seconds of this process per step (all its threads; GPU work is not in it)."""
        starts = [self.cpu_begin, *self.cpu_ends[:-1]]
        return [end - start for start, end in zip(starts, self.cpu_ends)]

    def steady(self, work_per_step: list[float], warmup: int = 1) -> dict[str, float]:
        """Throughput over the steps after `warmup` (all steps when there are no more than `warmup`)."""
        times = self.step_times()
        if len(times) <= warmup:
            warmup = 0
        seconds = sum(times[warmup:])
        work = sum(work_per_step[warmup:])
        return {"measured_steps": len(times) - warmup, "measured_s": seconds, "work": work,
                "per_s": work / seconds if seconds > 0 else float("nan")}


def peak_flops(dtype: str = "fp32", seconds: float = 1.0, size: int | None = None) -> float:
    """Achievable peak matmul FLOP/s of this device in `dtype` ("fp32" or "bf16"), with the current thread count:
    the best of three timed runs of square `size` x `size` matmuls (2 size^3 FLOPs each), `seconds` each.

    This is what MFU divides by: a measured ceiling of the machine as the benchmark runs it (one thread per process
    on the shared CPU), not a datasheet number. On a CPU with AMX, bf16 runs on the tile units.
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    size = size or (8192 if device == "cuda" else 1024)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    a = torch.randn(size, size, device=device).to(torch_dtype)
    b = torch.randn(size, size, device=device).to(torch_dtype)
    out = torch.empty(size, size, device=device, dtype=torch_dtype)
    torch.mm(a, b, out=out)  # warm-up (kernel selection, AMX tile configuration)
    best = 0.0
    for _ in range(3):
        count, start = 0, now()
        while True:
            torch.mm(a, b, out=out)
            count += 1
            if count % 4 == 0 and now() - start >= seconds / 3:
                break
        best = max(best, 2 * size**3 * count / (now() - start))
    return best


def environment() -> dict[str, str]:
    """Library versions and the machine, for the results file."""
    import importlib.metadata as md

    versions = {}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "deepspeed", "bitsandbytes", "datasets"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    info = {"python": platform.python_version(), "platform": f"{platform.system()} {platform.machine()}",
            "cpus": str(os.cpu_count()), "threads": str(torch.get_num_threads()), **versions}
    if torch.cuda.is_available():
        info["gpu"] = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return info


def rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def write_result(result_dir: str | os.PathLike, payload: dict) -> Path:
    """Each process writes `rank<N>.json`; the orchestrator combines them."""
    path = Path(result_dir) / f"rank{rank()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**payload, **peak_memory(), "rank": rank()}, indent=2) + "\n")
    return path
