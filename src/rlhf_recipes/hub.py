"""Publish a stage folder to the Hugging Face Hub: privately by default, only files on an allow-list.

    make push STAGE=ppo RUN=runs/gpt2/ppo ARGS="--repo_id you/gpt2-hh-ppo"     # python -m rlhf_recipes.hub ...

Every push of this project goes through this module: `make push`, a stage's `push_to_hub: true` (the final folder,
and with `hub_strategy: every_save` the weights of each checkpoint during training) and, for datasets,
`feedback.publish` (`make push-labels`). Three rules hold for all of them:

* **Private unless asked.** A new repository is created private; public needs `hub_private_repo: false` (stages,
  `make push-labels`) or `--public` (`make push`). Pushing into an existing *public* repository without that is
  refused before anything is uploaded, naming the repository and the setting.
* **An allow-list, not an ignore list.** Only the files `publishable_files` names go up: weights as safetensors,
  config and generation config, tokenizer files, the LoRA adapter, the model card, metrics JSON and plots (PNG),
  the data report, and the same inside `value_model/` (PPO) and `merged/` (LoRA). Anything else in the folder
  (`.env`, pickles, `training_args.bin`, optimizer/RNG state, checkpoints, `wandb/`, cached Arrow files) stays.
* **The token comes from the environment** (`HF_TOKEN`) or `hf auth login`, never from a flag or a file of ours.
  Without one, the command stops with one paragraph (exit code 2) before anything is created.

The card's `base_model` is the repository the parent stage was pushed to (recorded in the parent's folder as
`hub_repo.json`), else its nearest Hub ancestor, else absent: push the stages in order (SFT, reward, PPO) and
each card links to its parent.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import UserError, run_main
from .model_card import HUB_REPO_FILE, refresh_card_metadata

# The names a published folder may carry (matched against the file name, in the folder itself or in one of
# PUBLISHED_SUBFOLDERS; nothing deeper). Everything else stays local.
ALLOWED_FILES = (
    "*.safetensors", "*.safetensors.index.json",                                   # weights (sharded too)
    "config.json", "generation_config.json",                                       # model configuration
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
    "chat_template.jinja", "chat_template.json",                                   # tokenizer
    "adapter_config.json",                                                         # LoRA (+ adapter_model.safetensors)
    "README.md",                                                                   # the model card
    "stage_metrics.json", "eval_results.json", "train_results.json", "all_results.json", "trainer_state.json",
    "ppo_state.json", "reward_normalization.json", "data_report.json", "*.png",   # metrics, log history, plots
)
PUBLISHED_SUBFOLDERS = ("value_model", "merged")  # PPO's value model, a LoRA adapter merged into its base
# The settings that ask for a public repository, as each command spells them.
PUBLIC_FLAG_STAGE = "`hub_private_repo: false` (--hub_private_repo false)"
PUBLIC_FLAG_PUSH = "--public"
# One text for `--hub_private_repo` and the `--no_hub_private_repo` that the parser adds with the same help.
PRIVATE_REPO_HELP = (
    "Hub repository visibility. Default true, private: a new repository is created private, and pushing into an "
    "existing public one is refused. `--no_hub_private_repo` (or `--hub_private_repo false`, or "
    "`hub_private_repo: false` in the YAML) publishes publicly."
)
# hub_strategy values that would upload a checkpoint folder as it is (optimizer and RNG state, pickles).
UNSAFE_HUB_STRATEGIES = ("checkpoint", "all_checkpoints")


class HubError(UserError):
    """A push that cannot or must not happen (no token, a public repository, nothing to publish)."""


@dataclass
class HubPushArguments:
    """The push fields of every stage's training arguments (transformers' names), with private as the default.

    Mixed in *before* the trainer's own config class, so these definitions replace transformers' (whose
    `hub_private_repo=None` creates the repository public).
    """

    push_to_hub: bool = field(default=False, metadata={
        "help": "Publish the model to `hub_model_id` (private unless hub_private_repo is false): with "
                "hub_strategy every_save the weights, config and tokenizer of each checkpoint during training, and "
                "the finished folder at the end (model, tokenizer, card, metrics). Only allow-listed files go up; "
                "optimizer state, pickles and checkpoints never do. Needs HF_TOKEN or `hf auth login`."})
    hub_model_id: str | None = field(default=None, metadata={
        "help": "The repository to push to: `name` (in your namespace) or `namespace/name`. Default: the name of "
                "output_dir."})
    hub_private_repo: bool | None = field(default=True, metadata={"help": PRIVATE_REPO_HELP})
    hub_strategy: str = field(default="every_save", metadata={
        "help": "When to push with push_to_hub: 'every_save' (each checkpoint's weights, config and tokenizer, then "
                "the final folder) or 'end' (the final folder only). 'checkpoint' and 'all_checkpoints' would "
                "upload optimizer and RNG state, and are refused.",
        "choices": ["every_save", "end", *UNSAFE_HUB_STRATEGIES]})


def publishable_files(folder: str | os.PathLike, subfolders: tuple[str, ...] = PUBLISHED_SUBFOLDERS) -> list[str]:
    """The files of `folder` that may be published (paths relative to it, sorted): ALLOWED_FILES in the folder
    itself and in `subfolders`, nothing deeper."""
    folder = Path(folder)
    chosen = []
    for prefix in ("", *subfolders):
        place = folder / prefix
        if not place.is_dir():
            continue
        for path in sorted(place.iterdir()):
            if path.is_file() and any(fnmatch.fnmatchcase(path.name, pattern) for pattern in ALLOWED_FILES):
                chosen.append(f"{prefix}/{path.name}" if prefix else path.name)
    return chosen


def require_token() -> str:
    from huggingface_hub import get_token

    token = get_token()
    if token is None:
        raise HubError("No Hugging Face token found: export HF_TOKEN (a write token) or run `hf auth login`.")
    return token


@contextmanager
def hub_errors(repo_id: str) -> Iterator[None]:
    """The Hub's answers a user fixes (offline mode, a token it refuses) become one-paragraph errors."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        yield
    except OfflineModeIsEnabled as err:
        raise HubError(f"Cannot push to {repo_id}: HF_HUB_OFFLINE is set, so nothing can reach the Hub (the make "
                       "targets of the stages set it for the offline demo). Unset it for the push: run the recipe "
                       "as `.venv/bin/python recipes/<stage>.py ...`, or push the finished folder with `make push`.") \
            from err
    except HfHubHTTPError as err:
        status = getattr(err.response, "status_code", None)
        if status not in (401, 403):
            raise
        raise HubError(f"The Hub refused the push to {repo_id} ({status}): the token is invalid or cannot write "
                       f"there. Use a write token of an account that owns the namespace (HF_TOKEN or "
                       f"`hf auth login`). The Hub said: {str(err).splitlines()[0]}") from err


def hub_api():
    from huggingface_hub import HfApi

    return HfApi(token=require_token())


def full_repo_id(api, repo_id: str) -> str:
    """`name` means the token owner's `namespace/name`, as the Hub does when it creates one."""
    if "/" in repo_id:
        return repo_id
    with hub_errors(repo_id):
        return f"{api.whoami()['name']}/{repo_id}"


def check_visibility(api, repo_id: str, *, private: bool, public_flag: str, repo_type: str = "model") -> bool:
    """Refuse to push into an existing public repository unless public was asked; True when the repository
    exists. (Creating a repository sets its visibility; pushing into one does not, so this is the only check.)"""
    from huggingface_hub.errors import RepositoryNotFoundError

    with hub_errors(repo_id):
        try:
            info = api.repo_info(repo_id, repo_type=repo_type)
        except RepositoryNotFoundError:
            return False
    if private and info.private is False:
        kind = "dataset" if repo_type == "dataset" else "model"
        raise HubError(f"The {kind} repository {repo_id} already exists and is public: pushing into it would "
                       f"publish this upload. Push to a new (private) repository, make {repo_id} private in its "
                       f"settings, or, to publish on purpose, ask for it with {public_flag}.")
    return True


def prepare_repo(api, repo_id: str, *, private: bool, public_flag: str, repo_type: str = "model") -> str:
    """Resolve, check and (if new) create the repository; return its full id."""
    repo_id = full_repo_id(api, repo_id)
    check_visibility(api, repo_id, private=private, public_flag=public_flag, repo_type=repo_type)
    with hub_errors(repo_id):
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    return repo_id


def upload_files(api, folder: str | os.PathLike, repo_id: str, files: list[str], *, commit_message: str,
                 path_in_repo: str = "", repo_type: str = "model", revision: str | None = None):
    """One commit of exactly `files` (relative to `folder`): the only upload call of this project's models."""
    from huggingface_hub import CommitOperationAdd

    folder = Path(folder)
    if not files:
        raise HubError(f"{folder} holds no file that may be published ({', '.join(ALLOWED_FILES[:4])}, ...).")
    operations = [CommitOperationAdd(path_in_repo=f"{path_in_repo}{name}", path_or_fileobj=str(folder / name))
                  for name in files]
    with hub_errors(repo_id):
        return api.create_commit(repo_id, operations, commit_message=commit_message, repo_type=repo_type,
                                 revision=revision)


def push_run(run_dir: str | Path, repo_id: str, *, private: bool = True, value_repo_id: str | None = None,
             commit_message: str | None = None, public_flag: str = PUBLIC_FLAG_PUSH) -> list[str]:
    """Upload a stage folder's publishable files; return the repository ids written to."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file() and not (run_dir / "adapter_config.json").is_file():
        what = "does not exist" if not run_dir.exists() else \
            "holds no saved model (no config.json or adapter_config.json)"
        raise HubError(f"{run_dir} {what}: give the output_dir of a finished stage (e.g. RUN=runs/gpt2/sft).")
    api = hub_api()
    value_dir = run_dir / "value_model"
    separate_value = bool(value_repo_id) and value_dir.is_dir()
    repo_id = full_repo_id(api, repo_id)
    check_visibility(api, repo_id, private=private, public_flag=public_flag)
    if separate_value:
        value_repo_id = full_repo_id(api, value_repo_id)
        check_visibility(api, value_repo_id, private=private, public_flag=public_flag)
    # The Hub refuses a card whose base_model is not a Hub id; a parent pushed since training now has one.
    refresh_card_metadata(run_dir)
    subfolders = tuple(s for s in PUBLISHED_SUBFOLDERS if not (separate_value and s == "value_model"))
    files = publishable_files(run_dir, subfolders)
    prepare_repo(api, repo_id, private=private, public_flag=public_flag)
    upload_files(api, run_dir, repo_id, files, commit_message=commit_message or f"Upload {run_dir.name} with "
                 "rlhf-recipes")
    pushed = [repo_id]
    if separate_value:
        prepare_repo(api, value_repo_id, private=private, public_flag=public_flag)
        upload_files(api, value_dir, value_repo_id, publishable_files(value_dir, ()),
                     commit_message=f"Upload the PPO value model of {repo_id}")
        pushed.append(value_repo_id)
    # Stages trained from this folder (now or later) name this repository as their base_model.
    (run_dir / HUB_REPO_FILE).write_text(json.dumps({"repo_id": repo_id}) + "\n")
    return pushed


# ---- Pushes from inside a Trainer (push_to_hub: true) ----

def check_training_push(training_args) -> None:
    """Before training (every stage): with push_to_hub, a token, a safe hub_strategy, and a repository that is new
    or private (or public on purpose). Sets `hub_model_id` to the full id the Trainer and the final push use."""
    if not getattr(training_args, "push_to_hub", False):
        return
    strategy = str(getattr(training_args.hub_strategy, "value", training_args.hub_strategy))
    if strategy in UNSAFE_HUB_STRATEGIES:
        raise HubError(f"hub_strategy '{strategy}' would upload whole checkpoints (optimizer and RNG state, "
                       "pickles). Use 'every_save' (each checkpoint's weights, config and tokenizer) or 'end'.")
    api = hub_api()
    repo_id = training_args.hub_model_id or Path(training_args.output_dir).absolute().name
    repo_id = full_repo_id(api, repo_id)
    private = training_args.hub_private_repo is not False  # None (transformers' "unset") is private here too
    check_visibility(api, repo_id, private=private, public_flag=PUBLIC_FLAG_STAGE)
    training_args.hub_model_id = repo_id
    training_args.hub_private_repo = private


class HubPushMixin:
    """Mix into a `transformers.Trainer` subclass (before it): the Trainer's pushes during training
    (`hub_strategy: every_save`) upload the allow-listed files of the checkpoint and nothing else (transformers
    uploads the whole output_dir, `training_args.bin` included)."""

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        push_checkpoint(self, checkpoint_folder)


def with_allow_list_push(trainer_class: type) -> type:
    """`trainer_class` with `HubPushMixin` (for trainers used as TRL ships them; one that has it already is kept)."""
    if issubclass(trainer_class, HubPushMixin):
        return trainer_class
    return type(trainer_class.__name__, (HubPushMixin, trainer_class), {"__module__": trainer_class.__module__})


def push_checkpoint(trainer, checkpoint_folder: str) -> None:
    """The Trainer's checkpoint push, in the background as transformers does it, of the allowed files only.

    The files are hard-linked (else copied) into `output_dir/_hub_push-<step>/` first, so that rotating the
    checkpoint away (`save_total_limit`) cannot cut the upload short; that folder is removed when it is done.
    """
    from transformers.trainer_utils import SaveStrategy
    from transformers.utils.hub import PushInProgress

    args = trainer.args
    if not trainer.is_world_process_zero() or str(getattr(args.hub_strategy, "value", args.hub_strategy)) == "end":
        return
    if not args.hub_always_push and trainer.push_in_progress is not None and not trainer.push_in_progress.is_done():
        return
    trainer.callback_handler.on_push_begin(args, trainer.state, trainer.control)
    step = trainer.state.global_step
    staging = Path(args.output_dir) / f"_hub_push-{step}"
    shutil.rmtree(staging, ignore_errors=True)
    files = publishable_files(checkpoint_folder, subfolders=PUBLISHED_SUBFOLDERS)
    for name in files:
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(Path(checkpoint_folder) / name, staging / name)
        except OSError:
            shutil.copy2(Path(checkpoint_folder) / name, staging / name)
    message = (f"Training in progress, step {step}" if args.save_strategy == SaveStrategy.STEPS
               else f"Training in progress, epoch {int(trainer.state.epoch or 0)}")
    api = hub_api()

    def upload() -> Any:
        try:
            return upload_files(api, staging, trainer.hub_model_id, files, commit_message=message,
                                revision=args.hub_revision)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    job = api.run_as_future(upload)
    if trainer.push_in_progress is None or trainer.push_in_progress.is_done():
        trainer.push_in_progress = PushInProgress([job])
    else:
        trainer.push_in_progress.jobs.append(job)


# ---- make push ----

@dataclass
class PushArguments:
    stage: str = field(default=None, metadata={"help": "Which stage the folder holds. Stage and folder may also be "
                                                       "the first two words: `python -m rlhf_recipes.hub ppo "
                                                       "runs/gpt2/ppo --repo_id you/gpt2-hh-ppo`.",
                                               "choices": ["sft", "reward", "ppo", "grpo", "rloo"]})
    run_dir: str = field(default=None, metadata={"help": "The stage's output_dir (e.g. runs/gpt2/ppo)."})
    repo_id: str = field(default=None, metadata={"help": "The repository: `name` (your namespace) or "
                                                         "`namespace/name`, e.g. you/gpt2-hh-ppo."})
    public: bool = field(default=False, metadata={
        "help": "Publish publicly: create the repository public, and allow pushing into an existing public one. "
                "Default: private (a new repository is created private; an existing public one is refused)."})
    value_repo_id: str | None = field(default=None, metadata={
        "help": "PPO only: push the value model to this repository instead of the policy's value_model/."})


def push_main(args: PushArguments) -> list[str]:
    for name in ("stage", "run_dir", "repo_id"):
        if not getattr(args, name):
            raise HubError(f"`make push` needs STAGE, RUN and ARGS=\"--repo_id you/name\" ({name} is missing): "
                           "make push STAGE=ppo RUN=runs/gpt2/ppo ARGS=\"--repo_id you/gpt2-hh-ppo\".")
    pushed = push_run(args.run_dir, args.repo_id, private=not args.public, value_repo_id=args.value_repo_id,
                      commit_message=f"{args.stage}: upload with rlhf-recipes")
    print("Pushed to: " + ", ".join(f"https://huggingface.co/{r}" for r in pushed))
    return pushed


def main(argv: list[str] | None = None) -> list[str]:
    """`python -m rlhf_recipes.hub STAGE RUN_DIR --repo_id ...`: the two leading words are the stage and folder."""
    argv = list(sys.argv[1:] if argv is None else argv)
    positional = []
    while argv and not argv[0].startswith("-") and len(positional) < 2:
        positional.append(argv.pop(0))
    argv = [item for name, value in zip(("--stage", "--run_dir"), positional) for item in (name, value)] + argv
    return run_main(push_main, (PushArguments,), argv)


if __name__ == "__main__":
    main()
