"""Model cards: a `README.md` with Hub metadata for every saved stage."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

STAGE_TITLES = {
    "sft": "supervised fine-tuning (InstructGPT stage 1)",
    "reward": "reward model (InstructGPT stage 2)",
    "ppo": "PPO-ptx policy (InstructGPT stage 3)",
    "grpo": "GRPO policy (stage 3 with TRL's GRPOTrainer and our reward model)",
    "rloo": "RLOO policy (stage 3 with TRL's RLOOTrainer and our reward model)",
}
KEY_HYPERPARAMETERS = (
    "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
    "max_length", "seed", "ranking_batching", "kl_coef", "target_kl", "ptx_coef", "num_ppo_epochs",
    "num_mini_batches", "response_length", "total_episodes", "cliprange", "vf_coef", "gamma", "lam",
    "beta", "num_generations", "max_completion_length", "missing_eos_penalty", "temperature",
)


_TOKEN_FLAGS = ("--hub_token", "--hub-token", "--token", "--hf_token", "--hf-token")
_HF_TOKEN = re.compile(r"hf_[A-Za-z0-9]{30,}")  # the shape of a Hugging Face access token


def _safe_command(command: str) -> str:
    # A token passed as a flag (`--hub_token X` or `--hub_token=X`), or pasted anywhere, must never reach a card.
    words = command.split()
    safe = []
    for i, word in enumerate(words):
        flag, equals, _ = word.partition("=")
        if equals and flag in _TOKEN_FLAGS:
            word = f"{flag}=<redacted>"
        elif i > 0 and words[i - 1] in _TOKEN_FLAGS:
            word = "<redacted>"
        safe.append(_HF_TOKEN.sub("<redacted>", word))
    return " ".join(safe)


def write_model_card(
    output_dir: str | Path,
    *,
    stage: str,
    script_args,
    model_args,
    training_args,
    metrics: dict[str, Any],
    command: str,
) -> Path:
    output_dir = Path(output_dir)
    is_adapter = (output_dir / "adapter_config.json").is_file()
    base = model_args.model_name_or_path
    datasets = [d for d in (getattr(script_args, "dataset_name", None),) if d]
    metadata = {
        "library_name": "peft" if is_adapter else "transformers",
        "base_model": base,
        "license": "apache-2.0",
        "tags": ["rlhf-recipes", stage, "trl", "instructgpt"] + (["lora"] if is_adapter else []),
        "pipeline_tag": "text-classification" if stage == "reward" else "text-generation",
    }
    if datasets and not Path(datasets[0]).exists():
        metadata["datasets"] = datasets
    hyper = {k: getattr(training_args, k) for k in KEY_HYPERPARAMETERS if getattr(training_args, k, None) is not None}
    if getattr(model_args, "use_peft", False):
        hyper.update(lora_r=model_args.lora_r, lora_alpha=model_args.lora_alpha)
    shown_metrics = {k: v for k, v in metrics.items() if isinstance(v, int | float | str)}
    lines = [
        "---", yaml.safe_dump(metadata, sort_keys=False).strip(), "---", "",
        f"# {output_dir.name}: {STAGE_TITLES.get(stage, stage)}", "",
        f"Trained with rlhf-recipes from `{base}` on `{', '.join(datasets) or 'n/a'}`.", "",
        "## Hyperparameters", "", "```json", json.dumps(hyper, indent=2, default=str), "```", "",
        "## Final metrics", "", "```json", json.dumps(shown_metrics, indent=2, default=str), "```", "",
        "## Reproduce", "", "```bash", _safe_command(command), "```", "",
    ]
    if is_adapter:
        loader = "AutoPeftModelForSequenceClassification" if stage == "reward" else "AutoPeftModelForCausalLM"
        lines += ["## Loading the adapter", "", "```python", f"from peft import {loader}",
                  f'model = {loader}.from_pretrained("{output_dir.name}")', "```", ""]
    if stage == "reward":
        lines += ["The score is read at the last real token (EOS). `reward_normalization.json` holds a bias that "
                  "makes the reference set score 0 on average; rlhf-recipes adds it whenever it loads this model.", ""]
    path = output_dir / "README.md"
    path.write_text("\n".join(lines))
    return path
