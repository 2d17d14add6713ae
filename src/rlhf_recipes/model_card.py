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
    "dpo": "DPO policy (TRL's DPOTrainer on the preference labels, no reward model)",
    "online_dpo": "online DPO policy (pairs sampled from the policy, ranked by our reward model)",
}
KEY_HYPERPARAMETERS = (
    "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
    "max_length", "seed", "ranking_batching", "kl_coef", "target_kl", "ptx_coef", "num_ppo_epochs",
    "num_mini_batches", "response_length", "total_episodes", "cliprange", "vf_coef", "gamma", "lam",
    "beta", "num_generations", "max_completion_length", "missing_eos_penalty", "temperature", "loss_type",
    "ranking_pairs", "ref_model_path",
)


# Written beside a stage: what it was trained from, as given (local folders included), for `card_metadata` to
# resolve to Hub ids again when the stage is pushed. Not uploaded (a local path means nothing on the Hub).
SOURCES_FILE = "card_sources.json"
# Written into a folder once it is pushed: the repository it went to, so that its children's cards can link to it.
HUB_REPO_FILE = "hub_repo.json"
# namespace/name (or a legacy single name like "gpt2"): what the Hub accepts as `base_model` or `datasets`.
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*$")

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


def is_hub_id(reference: str) -> bool:
    return bool(_HUB_ID.match(reference)) and ".." not in reference and "--" not in reference \
        and len(reference) <= 96 and not reference.endswith((".", "-"))


def _card_metadata_of(folder: Path) -> dict:
    card = folder / "README.md"
    if not card.is_file():
        return {}
    text = card.read_text()
    if not text.startswith("---\n"):
        return {}
    metadata = yaml.safe_load(text.split("---\n")[1])
    return metadata if isinstance(metadata, dict) else {}


def hub_model_id(reference: str | None, _seen: frozenset = frozenset()) -> str | None:
    """The Hub id that stands for a model: the reference itself when it is a Hub id (not a local folder); for a
    folder, the repository it was pushed to, else its nearest Hub ancestor (following the folders' own sources back),
    else None."""
    if not reference:
        return None
    folder = Path(reference)
    if not folder.exists():
        return reference if is_hub_id(reference) else None
    key = str(folder.resolve())
    if key in _seen or not folder.is_dir():
        return None
    pushed = folder / HUB_REPO_FILE
    if pushed.is_file():
        return json.loads(pushed.read_text())["repo_id"]
    sources = folder / SOURCES_FILE
    if sources.is_file():
        return hub_model_id(json.loads(sources.read_text()).get("base_model"), _seen | {key})
    # A folder saved by something else (or an older card): follow its card's base_model.
    parent = _card_metadata_of(folder).get("base_model")
    return hub_model_id(parent if isinstance(parent, str) else None, _seen | {key})


def hub_dataset_ids(datasets: list[str]) -> list[str]:
    """The datasets the Hub can link to: Hub ids; local files and folders are left out."""
    return [d for d in datasets if d and not Path(d).exists() and is_hub_id(d)]


def card_metadata(output_dir: Path, stage: str, base_model: str | None, datasets: list[str]) -> dict:
    """The card's Hub metadata, with `base_model` and `datasets` resolved to Hub ids (or left out)."""
    is_adapter = (output_dir / "adapter_config.json").is_file()
    metadata = {"library_name": "peft" if is_adapter else "transformers"}
    base_id = hub_model_id(base_model)
    if base_id:
        metadata["base_model"] = base_id
    metadata.update({
        "license": "apache-2.0",
        "tags": ["rlhf-recipes", stage, "trl", "instructgpt"] + (["lora"] if is_adapter else []),
        "pipeline_tag": "text-classification" if stage == "reward" else "text-generation",
    })
    if dataset_ids := hub_dataset_ids(datasets):
        metadata["datasets"] = dataset_ids
    return metadata


def refresh_card_metadata(output_dir: str | Path) -> None:
    """Resolve the card's `base_model`/`datasets` again (a parent may have been pushed since): done before a push."""
    output_dir = Path(output_dir)
    card, sources = output_dir / "README.md", output_dir / SOURCES_FILE
    if not card.is_file() or not sources.is_file():
        return
    text = card.read_text()
    if not text.startswith("---\n"):
        return
    _, old, body = text.split("---\n", 2)
    recorded = json.loads(sources.read_text())
    metadata = card_metadata(output_dir, recorded["stage"], recorded.get("base_model"), recorded.get("datasets", []))
    card.write_text("---\n" + yaml.safe_dump(metadata, sort_keys=False) + "---\n" + body)


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
    (output_dir / SOURCES_FILE).write_text(json.dumps({"stage": stage, "base_model": base, "datasets": datasets},
                                                      indent=2) + "\n")
    metadata = card_metadata(output_dir, stage, base, datasets)
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
