"""Script arguments shared by every stage, and the YAML/flag parser that feeds the recipes.

Each recipe parses `(ScriptArguments, <Stage>Config, ModelConfig)` with TRL's `TrlParser`: a YAML file given with
`--config` sets the defaults and any flag overrides them. We add one thing on top: a YAML key that no dataclass knows
is an error that names the key and the file (TRL's message names neither the file nor a likely fix), and `--help`
lists only the fields this project adds, grouped by dataclass (TRL's full list runs to a thousand lines);
`--help-all` lists every field, ours first, then TRL's and transformers', grouped by the class that defines them.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import importlib.util
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from types import MappingProxyType, ModuleType
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


def require_paths(field_name: str, folder: str | os.PathLike, needed: tuple[str, ...], hint: str) -> None:
    """Refuse, before any work, a folder setting (`--demo_dir`, ...) that lacks a part the command reads."""
    missing = [part for part in needed if not os.path.exists(os.path.join(folder, part))]
    if not os.path.isdir(folder) or missing:
        what = "does not exist" if not os.path.isdir(folder) else f"lacks {', '.join(missing)}"
        raise MissingPathError(f"`{field_name}` = {folder} {what}. {hint}")


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
        metadata={"help": "Hold out this fraction of train (seeded) when the dataset has no test split.",
                  "range": "[0, 1)"},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N training rows.",
                                                                   "range": "[1, inf)"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only the first N evaluation rows.",
                                                                  "range": "[1, inf)"})
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


# Field metadata keys that are ours (`ranges`, `models.ROLES`), not argparse's: the parser leaves them out.
METADATA_KEYS = ("range", "role")
# Deprecated transformers field -> its current name: a default the user did not set goes through the current name
# (TRL still defaults `gradient_checkpointing`, which would print transformers' FutureWarning on every run).
RENAMED_FIELDS = {"gradient_checkpointing": "activation_checkpointing",
                  "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs"}


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available()) or \
        torch.backends.mps.is_available()


class RecipeParser(TrlParser):
    """TRL's parser, plus: our metadata keys kept from argparse, TRL's defaults of renamed fields set through the
    current name, and every value checked against its declared range (`rlhf_recipes.ranges`) before the dataclasses
    are built, so that no `__post_init__` or trainer sees an out-of-range value."""

    def __init__(self, dataclass_types: tuple[type, ...], user_set: frozenset[str] = frozenset()) -> None:
        super().__init__(dataclass_types)
        for dataclass_type in dataclass_types:
            defaults = {f.name: f.default for f in fields(dataclass_type)}
            for old, new in RENAMED_FIELDS.items():
                if defaults.get(old) is not None and defaults.get(new, "") is None and not {old, new} & user_set:
                    self.set_defaults(**{old: None, new: defaults[old]})
            # TRL's unset `bf16` means "on", which transformers refuses on a machine without a GPU: unset there, fp32.
            if defaults.get("bf16", False) is None and not {"bf16", "fp16", "use_cpu"} & user_set \
                    and not _has_accelerator():
                self.set_defaults(bf16=False)

    @staticmethod
    def _parse_dataclass_field(parser, dataclass_field):
        if any(key in dataclass_field.metadata for key in METADATA_KEYS):
            dataclass_field = copy.copy(dataclass_field)
            dataclass_field.metadata = MappingProxyType(
                {k: v for k, v in dataclass_field.metadata.items() if k not in METADATA_KEYS})
        TrlParser._parse_dataclass_field(parser, dataclass_field)

    def parse_args_into_dataclasses(self, args=None, return_remaining_strings=False, **kwargs):
        from .ranges import check_values

        namespace, _ = self.parse_known_args(args=args)
        check_values(self.dataclass_types, vars(namespace))
        return super().parse_args_into_dataclasses(args=args, return_remaining_strings=return_remaining_strings,
                                                   **kwargs)


def _flags(argv: list[str]) -> set[str]:
    """The field names the command line sets (`--name value`, `--name=value`, `--no_name` for a flag)."""
    names = {a[2:].split("=", 1)[0].replace("-", "_") for a in argv if a.startswith("--")}
    return names | {name[3:] for name in names if name.startswith("no_")}


USER_SET_ATTRIBUTE = "_rlhf_user_set"


def user_set_fields(args: Any) -> frozenset[str] | None:
    """The fields of a parsed dataclass the user set (in the YAML or as a flag); None for one built in code."""
    return getattr(args, USER_SET_ATTRIBUTE, None)


def _named_fields(message: str, dataclass_types: tuple[type, ...]) -> list[str]:
    names = {f.name for t in dataclass_types for f in fields(t)}
    return sorted(n for n in names if re.search(rf"(?<![\w]){re.escape(n)}(?![\w])", message))


HELP_ALL_FLAG = "--help-all"
USAGE = "{prog} [--config YAML] [--FIELD VALUE ...] [--help | --help-all]"
# Fields declared by classes from these packages are theirs; every other field is this project's.
THIRD_PARTY_PACKAGES = ("trl", "transformers", "peft", "accelerate")


def _field_origins(dataclass_type: type) -> dict[str, type]:
    """field name -> the most basic class in the MRO that declares it (where the field comes from)."""
    declared: dict[str, type] = {}
    for cls in reversed(dataclass_type.__mro__):
        for name in cls.__dict__.get("__annotations__", {}):
            declared.setdefault(name, cls)
    return {f.name: declared.get(f.name, dataclass_type) for f in fields(dataclass_type)}


def is_own_class(cls: type) -> bool:
    return cls.__module__.split(".")[0] not in THIRD_PARTY_PACKAGES


def help_groups(dataclass_types: tuple[type, ...]) -> list[tuple[str, list[str]]]:
    """(title, field names) for `--help`: this project's fields per dataclass first, then each library class's."""
    ours: list[tuple[str, list[str]]] = []
    theirs: dict[str, list[str]] = {}
    seen: set[str] = set()
    for dataclass_type in dataclass_types:
        own = []
        for name, origin in _field_origins(dataclass_type).items():
            if name in seen:
                continue
            seen.add(name)
            if is_own_class(origin):
                own.append(name)
            else:
                theirs.setdefault(f"{origin.__module__.split('.')[0]} {origin.__name__}", []).append(name)
        if own:
            ours.append((f"{dataclass_type.__name__} (this project)", own))
    return ours + list(theirs.items())


def format_help(parser: argparse.ArgumentParser, dataclass_types: tuple[type, ...], *, show_all: bool,
                description: str | None = None) -> str:
    """The recipe's help: our fields, grouped; with `show_all`, then every TRL/transformers field, grouped too."""
    actions: dict[str, list[argparse.Action]] = {}
    for action in parser._actions:
        # One spelling per flag (HfArgumentParser also accepts `--dataset-format` for `--dataset_format`).
        shown = copy.copy(action)
        shown.option_strings = [o for o in action.option_strings if "-" not in o[2:]] or action.option_strings
        actions.setdefault(action.dest, []).append(shown)
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "recipe"
    out = argparse.ArgumentParser(prog=prog, add_help=False, description=description,
                                  usage=USAGE.format(prog=prog),
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    general = out.add_argument_group("general")
    general.add_argument("--config", metavar="YAML", help="a recipe YAML: its keys set the fields below; flags "
                         "given after it override them")
    general.add_argument("--help", action="store_true", help="this project's fields (this list)")
    general.add_argument(HELP_ALL_FLAG, action="store_true", help="every field, TRL's and transformers' too")
    general.add_argument(DEBUG_FLAG, action="store_true", help=f"show the traceback of a user error (or {DEBUG_ENV}=1)")
    groups = help_groups(dataclass_types)
    hidden: dict[str, int] = {}
    for title, names in groups:
        if not show_all and not title.endswith("(this project)"):
            hidden[title] = len(names)
            continue
        group = out.add_argument_group(title)
        for name in names:
            group._group_actions.extend(actions.get(name, []))
    if hidden:
        counts = ", ".join(f"{title} {count}" for title, count in hidden.items())
        out.epilog = (f"Not listed: the fields of the libraries ({counts}).\n`{HELP_ALL_FLAG}` lists them all, "
                      "grouped by the class that defines them.")
    return out.format_help()


def _help_requested(argv: list[str]) -> str | None:
    if HELP_ALL_FLAG in argv:
        return "all"
    if "-h" in argv or "--help" in argv:
        return "ours"
    return None


def parse_recipe_args(dataclass_types: tuple[type, ...], args: list[str] | None = None,
                      description: str | None = None) -> tuple[Any, ...]:
    """Parse `--config file.yaml` plus flags into one instance of each dataclass; unknown keys are errors, and every
    value is checked against its declared range (`rlhf_recipes.ranges`) before any dataclass is built.

    `--help` prints this project's fields and exits; `--help-all` every field, grouped by the class defining it.
    Each instance records which of its fields the user set (`user_set_fields`), so that later checks can tell a
    default from a choice (an unset `max_length` becomes the model's context; a set one must fit it)."""
    argv = list(sys.argv[1:] if args is None else args)
    wanted = _help_requested(argv)
    if wanted:
        print(format_help(RecipeParser(dataclass_types), dataclass_types, show_all=wanted == "all",
                          description=description))
        sys.exit(0)
    config: dict[str, Any] = {}
    if "--config" in argv:
        if argv.index("--config") + 1 >= len(argv):
            raise ConfigError("`--config` needs a file: `--config recipes/<model>/<stage>.yaml`.")
        config_path = argv[argv.index("--config") + 1]
        config = check_config_keys(config_path, dataclass_types)
    user_set = frozenset(config) | frozenset(_flags(argv))
    parser = RecipeParser(dataclass_types, user_set)
    # argparse prints the usage line with every error; the generated one lists all ~200 flags.
    parser.usage = USAGE.format(prog=parser.prog)
    try:
        parsed = parser.parse_args_and_config(args=argv, fail_with_unknown_args=True)
    except ConfigError:
        raise
    except ValueError as err:
        if "Some specified arguments are not used" in str(err):
            raise ConfigError(f"{err}. Check the flag's spelling; `--help` lists every flag.") from err
        # The dataclasses' own checks (`__post_init__`, TRL's among them) of values the user gave.
        named = _named_fields(str(err), dataclass_types)
        where = f" (check {', '.join(f'`{n}`' for n in named)})" if named else ""
        raise ConfigError(f"Invalid recipe arguments{where}: {err}") from err
    for instance in parsed:
        if dataclasses.is_dataclass(instance):
            object.__setattr__(instance, USER_SET_ATTRIBUTE, frozenset(f.name for f in fields(instance)) & user_set)
    return parsed


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
        description = getattr(sys.modules.get(main.__module__), "__doc__", None)
        return main(*parse_recipe_args(dataclass_types, argv, description=description))
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


__all__ = ["ConfigError", "MissingPathError", "ModelConfig", "RecipeParser", "ScriptArguments", "UserError",
           "check_config_keys", "exit_with_user_error", "format_help", "help_groups", "parse_recipe_args",
           "require_paths", "run_cli", "run_main", "user_set_fields"]


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
