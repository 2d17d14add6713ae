#!/usr/bin/env bash
# One prepared check for a CUDA machine, under 8 minutes on one H100: the three stages of the 124M-shape GPT-2 in
# bf16 for a few steps each (PPO full and LoRA, TRL GRPO for reference, SFT, reward model), with ZeRO-2 runs, through the
# same harness as `make bench` (benchmarks/run.py, GPU work profile). Figures (throughput, torch's peak GPU memory,
# peak RSS, PPO time split) go to benchmarks/results/gpu-<device>.md and .json.
#
#   bash benchmarks/gpu_check.sh                 # uses .venv/bin/python if present, else python3
#   PYTHON=/path/to/python bash benchmarks/gpu_check.sh --machine h100-sxm
#
# Extra arguments go to benchmarks/run.py. Without a CUDA device it stops at once with exit code 2.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  version=$("$PY" -c "import torch; print(torch.__version__)" 2>/dev/null || echo "not importable")
  echo "gpu_check.sh: no CUDA device is visible to torch (python: $PY, torch: $version)." >&2
  echo "This check needs an NVIDIA GPU and a CUDA build of torch; on a CPU machine run 'make bench' instead." >&2
  exit 2
fi
"$PY" -c "import deepspeed" 2>/dev/null || {
  echo "gpu_check.sh: deepspeed is not installed (pip install -e '.[deepspeed,quantization]')." >&2; exit 2; }

NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")
"$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'{torch.cuda.device_count()} x {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled
# The harness imports the package too: work from a checkout without `pip install -e .` as well.
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
CASES="ppo-124m-full-1proc,ppo-124m-lora-1proc,grpo-124m-full-1proc,sft-124m-full-1proc,rm-124m-full-1proc,sft-124m-full-zero2,ppo-124m-full-zero2"

# The harness skips what would pass its budget (7 min); `timeout` is the hard stop before 8 minutes.
start=$(date +%s)
status=0
timeout --signal=INT 470 "$PY" benchmarks/run.py --bf16 --profile gpu --cases "$CASES" \
  --num_processes "$NGPU" --threads 4 --budget_min 6.5 "$@" || status=$?
echo "gpu_check.sh: finished in $(( $(date +%s) - start )) s with exit code $status; see benchmarks/results/"
exit "$status"
