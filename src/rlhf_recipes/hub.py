"""Publish a finished stage folder to the Hugging Face Hub (`make push STAGE=ppo RUN=runs/gpt2/ppo ARGS=...`).

Training runs publish themselves with `push_to_hub: true` (the Trainer's own upload); this module publishes a
folder that already exists. The token comes from the environment (`HF_TOKEN`) or `hf auth login`, never from a
flag or a file of ours. What goes up: weights as safetensors, config, tokenizer, the model card and metrics; for
LoRA runs the adapter (and `merged/` when it was saved); for a reward model its `reward_normalization.json`; for
PPO the value model, in the `value_model/` subfolder or, with `--value_repo_id`, as a repository of its own.

The card's `base_model` is the repository the parent stage was pushed to (recorded in the parent's folder as
`hub_repo.json`), else its nearest Hub ancestor, else absent: push the stages in order (SFT, reward, PPO) and
each card links to its parent.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .model_card import HUB_REPO_FILE, SOURCES_FILE, refresh_card_metadata

# Never published: optimizer/RNG state, pickles, partial checkpoints, local logs, local paths.
IGNORE_PATTERNS = ["checkpoint-*", "tmp-checkpoint-*", "*.pt", "*.pth", "*.bin", "runs/*", "_*", SOURCES_FILE,
                   HUB_REPO_FILE]


def require_token() -> str:
    from huggingface_hub import get_token

    token = get_token()
    if token is None:
        raise ValueError("No Hugging Face token found: export HF_TOKEN (a write token) or run `hf auth login`.")
    return token


def push_run(run_dir: str | Path, repo_id: str, *, private: bool = True, value_repo_id: str | None = None,
             commit_message: str | None = None) -> list[str]:
    """Upload a stage folder; return the repository ids written to."""
    from huggingface_hub import HfApi

    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file() and not (run_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{run_dir} holds no saved model (no config.json or adapter_config.json).")
    api = HfApi(token=require_token())
    ignore = list(IGNORE_PATTERNS)
    value_dir = run_dir / "value_model"
    if value_repo_id and value_dir.is_dir():
        ignore.append("value_model/*")
    # The Hub refuses a card whose base_model is not a Hub id; a parent pushed since training now has one.
    refresh_card_metadata(run_dir)
    api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(folder_path=str(run_dir), repo_id=repo_id, ignore_patterns=ignore,
                      commit_message=commit_message or f"Upload {run_dir.name} with rlhf-recipes")
    pushed = [repo_id]
    if value_repo_id and value_dir.is_dir():
        api.create_repo(value_repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(value_dir), repo_id=value_repo_id, ignore_patterns=IGNORE_PATTERNS,
                          commit_message=f"Upload the PPO value model of {repo_id}")
        pushed.append(value_repo_id)
    # Stages trained from this folder (now or later) name this repository as their base_model.
    (run_dir / HUB_REPO_FILE).write_text(json.dumps({"repo_id": repo_id}) + "\n")
    return pushed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["sft", "reward", "ppo", "grpo", "rloo"], help="which stage the folder holds")
    parser.add_argument("run_dir", help="the stage's output_dir")
    parser.add_argument("--repo_id", required=True, help="e.g. your-name/gpt2-hh-ppo")
    parser.add_argument("--public", action="store_true", help="create a public repository (default: private)")
    parser.add_argument("--value_repo_id", help="PPO only: push the value model to this repository instead")
    args = parser.parse_args(argv)
    pushed = push_run(args.run_dir, args.repo_id, private=not args.public, value_repo_id=args.value_repo_id,
                      commit_message=f"{args.stage}: upload with rlhf-recipes")
    print("Pushed to: " + ", ".join(f"https://huggingface.co/{r}" for r in pushed))


if __name__ == "__main__":
    main()
