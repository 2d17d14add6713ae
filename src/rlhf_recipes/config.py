"""Script arguments shared by every stage, and the YAML/flag parser that feeds the recipes.

Each recipe parses `(ScriptArguments, <Stage>Config, ModelConfig)` with TRL's `TrlParser`: a YAML file given with
`--config` sets the defaults and any flag overrides them. We add one thing on top: a YAML key that no dataclass knows
is an error that names the key and the file (TRL's message names neither the file nor a likely fix).
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from types import ModuleType
from typing import Any, NoReturn

import yaml
from trl import ModelConfig, TrlParser
from trl import ScriptArguments as TrlScriptArguments


class UserError(Exception):
    """A problem the user fixes (a config key, a data row, a model path, a damaged checkpoint), not a bug.

    `run_main` prints its message as one paragraph and exits with code 2, without a traceback (`--debug` or
    RLHF_DEBUG=1 shows it). Every error class of this kind derives from it; programming errors do not.
    """


class ConfigError(UserError, ValueError):
    """A recipe's configuration is wrong; the message says which key, where, and how to fix it."""


class MissingPathError(UserError, FileNotFoundError):
    """An input file or folder a setting names does not exist; the message names the setting and the path."""


@dataclass
class ScriptArguments(TrlScriptArguments):
    """Dataset arguments shared by every stage (TRL's `ScriptArguments` plus the options of our dataset loader).

    `dataset_name` is a Hub dataset id, a local `.jsonl/.json/.csv/.parquet` file, or a local folder holding
    `train.*` and `test.*` files.
    """

    dataset_format: str = field(
        default="auto",
        metadata={
            "help": "Row format: auto, prompt_completion, text, messages, hh (Anthropic HH chosen/rejected "
            "conversations), preference (prompt/chosen/rejected) or ranking (prompt + responses best to worst).",
            "choices": ["auto", "prompt_completion", "text", "messages", "hh", "preference", "ranking"],
        },
    )
    conversation_template: str = field(
        default="auto",
        metadata={
            "help": "How conversations (messages, HH chosen/rejected, lists of messages) become text: 'auto' (the "
            "tokenizer's chat template when it has one, else HH's), 'chat_template', or 'hh' "
            "('\\n\\nHuman: ...\\n\\nAssistant: ...'). With a chat template its end-of-turn token is the EOS.",
            "choices": ["auto", "chat_template", "hh"],
        },
    )
    eval_split_size: float = field(
        default=0.0,
        metadata={"help": "Hold out this fraction of train (seeded) when the dataset has no test split."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only the first N evaluation rows."})
    invalid_rows: str = field(
        default="drop",
        metadata={
            "help": "What to do with rows the stage cannot use (empty prompt, chosen == rejected, ...): 'drop' "
            "them and report their row numbers, or 'error' on the first.",
            "choices": ["drop", "error"],
        },
    )
    prompt_overflow: str = field(
        default="truncate_left",
        metadata={
            "help": "A prompt longer than the context window: 'truncate_left' (keep its end), 'drop' the row, "
            "or 'error'.",
            "choices": ["truncate_left", "drop", "error"],
        },
    )
    merge_adapter: bool = field(
        default=False,
        metadata={"help": "With LoRA, also save the adapter merged into the base as a full model (`merged/`)."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Train even though `output_dir` already holds a finished model or another run's "
                  "checkpoints: that folder is first moved aside to `<output_dir>.previous-<time>` (nothing is "
                  "deleted), so the new run starts in an empty folder. Without it such a run is refused; "
                  "`--resume_from_checkpoint latest` continues the run that is there instead."},
    )


def _known_keys(dataclass_types: tuple[type, ...]) -> dict[str, str]:
    known = {"env": "TrlParser"}
    for dataclass_type in dataclass_types:
        for f in fields(dataclass_type):
            known.setdefault(f.name, dataclass_type.__name__)
    return known


def check_config_keys(config_path: str | os.PathLike, dataclass_types: tuple[type, ...]) -> dict[str, Any]:
    """Load a recipe YAML and refuse keys that none of `dataclass_types` defines."""
    try:
        with open(config_path, encoding="utf-8") as handle:
            config = yaml.safe_load(handle)
    except FileNotFoundError as err:
        raise ConfigError(f"Config file {config_path} does not exist.") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"Config file {config_path} is not valid YAML: {err}") from err
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ConfigError(f"Config file {config_path} must be a YAML mapping of `key: value` lines.")
    known = _known_keys(dataclass_types)
    for key in config:
        if key not in known:
            hint = difflib.get_close_matches(str(key), list(known), n=1)
            suggestion = f" Did you mean '{hint[0]}'?" if hint else ""
            raise ConfigError(
                f"Unknown key '{key}' in config file {config_path}.{suggestion} Remove it or fix its spelling; "
                f"valid keys are the fields of {', '.join(t.__name__ for t in dataclass_types)}."
            )
    return config


def parse_recipe_args(dataclass_types: tuple[type, ...], args: list[str] | None = None) -> tuple[Any, ...]:
    """Parse `--config file.yaml` plus flags into one instance of each dataclass; unknown keys are errors."""
    argv = list(sys.argv[1:] if args is None else args)
    if "--config" in argv:
        if argv.index("--config") + 1 >= len(argv):
            raise ConfigError("`--config` needs a file: `--config recipes/<model>/<stage>.yaml`.")
        config_path = argv[argv.index("--config") + 1]
        check_config_keys(config_path, dataclass_types)
    parser = TrlParser(dataclass_types)
    try:
        return parser.parse_args_and_config(args=argv, fail_with_unknown_args=True)
    except ConfigError:
        raise
    except ValueError as err:
        if "Some specified arguments are not used" in str(err):
            raise ConfigError(f"{err}. Check the flag's spelling; `--help` lists every flag.") from err
        # The dataclasses' own checks (`__post_init__`) of values the user gave.
        raise ConfigError(f"Invalid recipe arguments: {err}") from err


DEBUG_FLAG = "--debug"
DEBUG_ENV = "RLHF_DEBUG"
USER_ERROR_EXIT_CODE = 2


def _debug_requested(argv: list[str]) -> bool:
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes")


def run_main(main: Callable[..., Any], dataclass_types: tuple[type, ...], args: list[str] | None = None) -> Any:
    """What every recipe's `if __name__ == "__main__":` calls: parse the arguments, run `main`, report errors.

    A `UserError` ends the process with its message as one paragraph and exit code 2, no traceback; `--debug` (or
    RLHF_DEBUG=1) shows the traceback. Other exceptions are bugs and keep theirs. A preempted run (SIGTERM/SIGINT)
    leaves through `preemption.Preempted`, a `SystemExit` with code 143/130.
    """
    argv = list(sys.argv[1:] if args is None else args)
    debug = _debug_requested(argv)
    # A bare `--debug` is ours; `--debug underflow_overflow` is TrainingArguments' own field, left to the parser.
    argv = [a for i, a in enumerate(argv)
            if a != DEBUG_FLAG or (i + 1 < len(argv) and not argv[i + 1].startswith("--"))]
    try:
        return main(*parse_recipe_args(dataclass_types, argv))
    except KeyboardInterrupt:
        if debug:
            raise
        # Training loops turn SIGINT into a checkpoint and a stop (`preemption`); this is one before or after them.
        print("\nInterrupted (SIGINT) outside a training loop: nothing to checkpoint. (exit code 130)",
              file=sys.stderr, flush=True)
        sys.exit(130)
    except UserError as err:
        if debug:
            raise
        exit_with_user_error(err)


def exit_with_user_error(err: UserError) -> NoReturn:
    """Print a user error as one paragraph (with the rank under several processes) and exit with code 2."""
    message = " ".join(str(err).split())  # one paragraph, whatever line breaks the message had
    rank = f"[rank {os.environ.get('RANK', '?')}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    print(f"{rank}error: {message}\n(exit code {USER_ERROR_EXIT_CODE}; add --debug or set {DEBUG_ENV}=1 for the "
          "traceback)", file=sys.stderr, flush=True)
    sys.exit(USER_ERROR_EXIT_CODE)


def run_cli(main: Callable[[list[str]], Any], args: list[str] | None = None) -> Any:
    """`run_main` for the commands that parse their own arguments (`python -m rlhf_recipes.<tool>`): `main(argv)`
    runs, and a `UserError` exits 2 with its message as one paragraph (`--debug` or RLHF_DEBUG=1: the traceback)."""
    argv = list(sys.argv[1:] if args is None else args)
    debug = _debug_requested(argv)
    try:
        return main([a for a in argv if a != DEBUG_FLAG])
    except UserError as err:
        if debug:
            raise
        exit_with_user_error(err)


__all__ = ["ConfigError", "ModelConfig", "ScriptArguments", "UserError", "check_config_keys", "parse_recipe_args",
           "run_main"]


def load_recipe_module(path: str | os.PathLike) -> ModuleType:
    """Import a recipe script (`recipes/<stage>.py`) as a module, for code that calls its `main()` in-process.

    Recipes are scripts beside the package, not part of it; the tests and benchmarks run them this way.
    """
    name = f"recipe_{os.path.splitext(os.path.basename(path))[0]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"No recipe script at {path}.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
