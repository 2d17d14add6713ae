"""The valid range or choices of every setting of every command, declared once, and the one check of them all.

Where a range is declared:

* Fields of this project's dataclasses carry it in their metadata, next to the field:
  `field(default=4, metadata={"help": "...", "range": "[1, inf)"})`. Enumerated fields use `"choices": [...]`
  (argparse also enforces those on the command line; YAML values are checked here).
* Fields inherited from TRL/transformers (`learning_rate`, `per_device_train_batch_size`, `beta`, ...) are in
  `INHERITED_RANGES` below, keyed `"<Class>.<field>"` (one class and its subclasses) or `"<field>"` (any class).
  A new recipe registers its config's fields by adding entries there (or metadata, for its own fields), and
  cross-field rules with `@rule`.

Range syntax: an interval `[1, inf)`, `(0, 1]`, a single value `-1`, alternatives joined by ` or `
(`-1 or [1, inf)`), or `free: <why>` for a number deliberately left unchecked. `None` is always accepted for a
field whose type allows it (it means "unset"). Text, path and flag fields are free by their type.

`check_values` runs in `config.parse_recipe_args` on the parsed values, before the dataclasses' own `__post_init__`
(so TRL's checks never see an out-of-range value) and before anything loads; it raises one `ConfigError` that
names every field, its value and its range.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import re
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .config import ConfigError

INF = math.inf

# ---- Ranges of the TRL / transformers fields the recipes rely on ----
INHERITED_RANGES: dict[str, Any] = {
    # transformers.TrainingArguments (every stage's config derives from it)
    "learning_rate": "[0, inf)",
    "num_train_epochs": "(0, inf)",
    "max_steps": "-1 or [1, inf)",  # -1: use num_train_epochs
    "per_device_train_batch_size": "[1, inf)",
    "per_device_eval_batch_size": "[1, inf)",
    "gradient_accumulation_steps": "[1, inf)",
    "eval_accumulation_steps": "[1, inf)",
    "warmup_steps": "[0, inf)",  # < 1: a fraction of the steps
    "weight_decay": "[0, inf)",
    "adam_beta1": "[0, 1)",
    "adam_beta2": "[0, 1)",
    "adam_epsilon": "(0, inf)",
    "max_grad_norm": "[0, inf)",  # 0: no clipping
    "label_smoothing_factor": "[0, 1)",
    "neftune_noise_alpha": "[0, inf)",
    "torch_empty_cache_steps": "[1, inf)",
    "logging_steps": "(0, inf)",  # < 1: a fraction of the steps
    "eval_steps": "(0, inf)",
    "save_steps": "(0, inf)",
    "eval_delay": "[0, inf)",
    "save_total_limit": "[1, inf)",
    "seed": "[0, 4294967295]",  # numpy's seed range
    "data_seed": "[0, 4294967295]",
    "dataloader_num_workers": "[0, inf)",
    "dataloader_prefetch_factor": "[1, inf)",
    "ddp_bucket_cap_mb": "[1, inf)",
    "ddp_timeout": "[1, inf)",
    "local_rank": "free: set by the launcher (-1 outside distributed runs)",
    "router_aux_loss_coef": "[0, inf)",
    "dataset_num_proc": "[1, inf)",
    "pad_to_multiple_of": "free: an integer or 'auto', checked by TRL's collator",
    # trl.ModelConfig
    "lora_r": "[1, inf)",
    "lora_alpha": "[1, inf)",
    "lora_dropout": "[0, 1)",
    # trl.SFTConfig / trl.RewardConfig
    "max_length": "[1, inf)",
    "center_rewards_coefficient": "[0, inf)",
    # trl.GRPOConfig / trl.RLOOConfig
    "num_generations": "[2, inf)",  # group-relative and leave-one-out baselines need two completions per prompt
    "num_generations_eval": "[1, inf)",
    "max_completion_length": "[1, inf)",
    "max_prompt_length": "[1, inf)",
    "generation_batch_size": "[1, inf)",
    "steps_per_generation": "[1, inf)",
    "num_iterations": "[1, inf)",
    "beta": "[0, inf)",
    "epsilon": "[0, inf)",
    "epsilon_high": "[0, inf)",
    "delta": "(0, inf)",
    "top_k": "[0, inf)",  # 0: off
    "min_p": "[0, 1]",
    "repetition_penalty": "(0, inf)",
    "ref_model_mixup_alpha": "[0, 1]",
    "ref_model_sync_steps": "[1, inf)",
    "top_entropy_quantile": "(0, 1]",
    "entropy_coef": "[0, inf)",
    "entropy_coef_min": "[0, inf)",
    "entropy_coef_max": "[0, inf)",
    "entropy_coef_delta": "[0, inf)",
    "entropy_target": "[0, inf)",
    "sapo_temperature_pos": "(0, inf)",
    "sapo_temperature_neg": "(0, inf)",
    "vespo_k_pos": "[0, inf)",
    "vespo_k_neg": "[0, inf)",
    "vespo_lambda_pos": "[0, inf)",
    "vespo_lambda_neg": "[0, inf)",
    "reward_weights": "free: one weight per reward function, any sign",
    "reward_clip_range": "free: a (min, max) pair, checked by TRL",
    "off_policy_mask_threshold": "[0, inf)",
    "max_tool_calling_iterations": "[1, inf)",
    "num_completions_to_print": "[0, inf)",
    "vllm_importance_sampling_cap": "(0, inf)",
    "vllm_importance_sampling_clip_max": "(0, inf)",
    "vllm_importance_sampling_clip_min": "[0, inf)",
    "vllm_server_port": "[1, 65535]",
    "vllm_group_port": "[1, 65535]",
    "vllm_server_timeout": "(0, inf)",
    "vllm_gpu_memory_utilization": "(0, 1]",
    "vllm_max_model_length": "[1, inf)",
    "vllm_tensor_parallel_size": "[1, inf)",
    "GRPOConfig.loss_type": ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"),
    "GRPOConfig.importance_sampling_level": ("token", "sequence"),
    # trl.DPOConfig (recipes/dpo.py)
    "DPOConfig.beta": "(0, inf)",  # DPO's implicit reward is beta * log-ratio; IPO's tau likewise
    "DPOConfig.loss_type": ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard",
                            "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"),
    "DPOConfig.f_divergence_type": ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"),
    "loss_weights": "[0, inf)",
    "precompute_ref_batch_size": "[1, inf)",
    "ld_alpha": "[0, 1]",
    "f_alpha_divergence_coef": "(0, inf)",
    "label_smoothing": "[0, 0.5)",  # robust DPO: the probability that a label is flipped
    "discopop_tau": "(0, inf)",
    # trl.experimental OnlineDPOConfig (recipes/online_dpo.py)
    "OnlineDPOConfig.missing_eos_penalty": "[0, inf)",  # subtracted from the score of a response without EOS
    "OnlineDPOConfig.max_new_tokens": "[1, inf)",
    # Sampling settings shared by TRL's online configs and ours.
    "temperature": "(0, inf)",
    "top_p": "(0, 1]",
}


# ---- Model roles of path fields (see `models.ROLES`): ours are in field metadata (`"role": "reward"`) ----
INHERITED_ROLES: dict[str, str] = {"model_name_or_path": "policy"}
# A stage whose config class is present gives a path field another role: the reward stage puts a head on its model.
STAGE_ROLES: dict[str, dict[str, str]] = {"RewardConfig": {"model_name_or_path": "reward_base"}}


def field_roles(dataclass_types: Iterable[type]) -> dict[str, str]:
    """Path field -> model role, for the dataclasses of one command."""
    roles: dict[str, str] = {}
    class_names = {klass.__name__ for cls in dataclass_types for klass in cls.__mro__}
    for cls in dataclass_types:
        for f in dataclasses.fields(cls):
            role = f.metadata.get("role") or INHERITED_ROLES.get(f.name)
            if role:
                roles.setdefault(f.name, role)
    for name in class_names & set(STAGE_ROLES):
        roles.update(STAGE_ROLES[name])
    return roles


def check_roles(dataclass_types: Iterable[type], values: dict[str, Any]) -> None:
    """Refuse a local checkpoint of the wrong kind in any path field (a reward model as the policy, ...)."""
    from .models import check_model_role

    for name, role in field_roles(dataclass_types).items():
        value = values.get(name)
        for path in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(path, str) and path:
                check_model_role(path, role, name)


# ---- What a field declares ----
@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    low_closed: bool
    high_closed: bool

    def __contains__(self, value: float) -> bool:
        above = value >= self.low if self.low_closed else value > self.low
        below = value <= self.high if self.high_closed else value < self.high
        return above and below


@dataclass(frozen=True)
class Spec:
    """A field's declared range (`intervals`), choices, or a reason to leave it free."""

    text: str
    intervals: tuple[Interval, ...] = ()
    choices: tuple[Any, ...] | None = None
    free: str | None = None

    def accepts(self, value: Any) -> bool:
        if self.free is not None:
            return True
        if self.choices is not None:
            return value in self.choices or str(getattr(value, "value", value)) in [str(c) for c in self.choices]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return any(value in interval for interval in self.intervals)


_NUMBER = r"[-+]?(?:inf|\d+(?:\.\d*)?(?:e[-+]?\d+)?)"
_INTERVAL = re.compile(rf"^([\[(])\s*({_NUMBER})\s*,\s*({_NUMBER})\s*([\])])$")


def parse_spec(declared: Any) -> Spec:
    """A `Spec` from a declaration: a range string, `free: why`, or a sequence of choices."""
    if isinstance(declared, (list, tuple, set, frozenset, type({}.keys()))):
        choices = tuple(declared)
        return Spec(text="one of " + ", ".join(repr(c) for c in choices), choices=choices)
    text = str(declared).strip()
    if text.startswith("free"):
        return Spec(text=text, free=text.partition(":")[2].strip() or "free")
    intervals = []
    for part in text.split(" or "):
        part = part.strip()
        match = _INTERVAL.match(part)
        if match:
            intervals.append(Interval(float(match[2]), float(match[3]), match[1] == "[", match[4] == "]"))
        elif re.fullmatch(_NUMBER, part):
            intervals.append(Interval(float(part), float(part), True, True))
        else:
            raise ValueError(f"Bad range declaration {declared!r}: use '[a, b]', '(a, b)', a number, 'x or y', "
                             "or 'free: why'.")
    return Spec(text=text.replace("inf", "∞"), intervals=tuple(intervals))


def _unwrap(annotation: Any) -> tuple[Any, bool, bool]:
    """(base type, allows None, is a list of it) of a field's type annotation."""
    optional, is_list = False, False
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        if len(args) != 1:
            return annotation, optional, False
        annotation = args[0]
        origin = typing.get_origin(annotation)
    if origin in (list, tuple) and typing.get_args(annotation):
        is_list, annotation = True, typing.get_args(annotation)[0]
    return annotation, optional, is_list


def _is_number_type(annotation: Any) -> bool:
    return annotation in (int, float)


def _is_number_field(annotation: Any) -> bool:
    base, _, _ = _unwrap(annotation)
    if _is_number_type(base):
        return True
    # `int | str` (e.g. "auto"): still a number to declare
    return typing.get_origin(base) in (typing.Union, types.UnionType) and any(
        _is_number_type(a) for a in typing.get_args(base))


def declared_spec(cls: type, f: dataclasses.Field, annotation: Any) -> Spec | None:
    """The declared spec of field `f` of dataclass `cls`; None when a number field declares nothing (a gap the tests
    catch). Text, path and flag fields without choices are free by their type."""
    if "range" in f.metadata:
        return parse_spec(f.metadata["range"])
    for klass in cls.__mro__:
        if f"{klass.__name__}.{f.name}" in INHERITED_RANGES:
            return parse_spec(INHERITED_RANGES[f"{klass.__name__}.{f.name}"])
    if f.metadata.get("choices"):
        return parse_spec(f.metadata["choices"])
    base, _, _ = _unwrap(annotation)
    if isinstance(base, type) and issubclass(base, enum.Enum):
        return parse_spec([member.value for member in base])
    if typing.get_origin(base) is typing.Literal:
        return parse_spec(typing.get_args(base))
    if f.name in INHERITED_RANGES:
        return parse_spec(INHERITED_RANGES[f.name])
    if _is_number_field(annotation):
        return None
    return Spec(text="free: text, path or flag", free="text, path or flag")


def field_specs(cls: type) -> dict[str, tuple[Spec | None, Any]]:
    """Every init field of `cls`: its spec (None: undeclared) and its type annotation."""
    hints = typing.get_type_hints(cls)
    return {f.name: (declared_spec(cls, f, hints[f.name]), hints[f.name]) for f in dataclasses.fields(cls) if f.init}


# ---- The one check ----
CrossFieldRule = Callable[[dict[str, Any], set[str]], Iterable[str]]
RULES: list[CrossFieldRule] = []


def rule(function: CrossFieldRule) -> CrossFieldRule:
    """Register a cross-field rule: `function(values, class_names)` yields one message per problem."""
    RULES.append(function)
    return function


def _value_problem(name: str, value: Any, spec: Spec, annotation: Any, owner: str) -> str | None:
    base, optional, is_list = _unwrap(annotation)
    if value is None:
        return None if optional or spec.free else f"`{name}` must be set ({owner}): {spec.text}"
    items = value if is_list and isinstance(value, (list, tuple)) else [value]
    for item in items:
        if base is int and spec.choices is None and spec.free is None and isinstance(item, float) \
                and not item.is_integer():
            return f"`{name}` = {item!r} must be a whole number in {spec.text} ({owner})"
        if not spec.accepts(item):
            shown = f"{item!r} (in {value!r})" if len(items) > 1 else repr(item)
            kind = "must be one of" if spec.choices is not None else "is out of range: it must be in"
            choices = ", ".join(repr(c) for c in spec.choices) if spec.choices is not None else spec.text
            return f"`{name}` = {shown} {kind} {choices} ({owner})"
    return None


def check_values(dataclass_types: Iterable[type], values: dict[str, Any], *, roles: bool = True) -> None:
    """Check `values` (field name -> value, as parsed) against every declared range and cross-field rule of
    `dataclass_types`, raising one `ConfigError` naming each field, its value and its range; then the model role of
    every local checkpoint path (`check_roles`)."""
    dataclass_types = list(dataclass_types)
    problems: list[str] = []
    names: set[str] = set()
    checked: set[str] = set()
    for cls in dataclass_types:
        names.update(klass.__name__ for klass in cls.__mro__)
        for name, (spec, annotation) in field_specs(cls).items():
            if name in checked or name not in values or spec is None:
                continue
            checked.add(name)
            problem = _value_problem(name, values[name], spec, annotation, cls.__name__)
            if problem:
                problems.append(problem)
    if not problems:  # cross-field rules assume each value is in its own range
        for check in RULES:
            problems.extend(check(values, names))
    if not problems and roles:
        check_roles(dataclass_types, values)
    if problems:
        raise ConfigError("Invalid setting" + ("s" if len(problems) > 1 else "") + ": " + "; ".join(problems)
                          + ". Fix it in the recipe YAML or on the command line (`--help` describes each).")


def check_arguments(*instances: Any) -> None:
    """`check_values` for dataclass instances built in code rather than parsed (ranges and rules; the model roles
    of their paths are checked when the command parses them, and again by `models.load_model`)."""
    values: dict[str, Any] = {}
    for instance in instances:
        for f in dataclasses.fields(instance):
            values.setdefault(f.name, getattr(instance, f.name))
    check_values([type(i) for i in instances], values, roles=False)


def _world_size() -> int:
    return max(1, int(os.environ.get("WORLD_SIZE", "1")))


# ---- Cross-field rules ----
@rule
def _ppo_episodes_fill_one_batch(values: dict[str, Any], classes: set[str]) -> Iterable[str]:
    if "PPOConfig" not in classes or values.get("total_episodes") is None:
        return
    batch = (values["per_device_train_batch_size"] * values["gradient_accumulation_steps"]
             * values["num_mini_batches"] * _world_size())
    if values["total_episodes"] < batch:
        yield (f"`total_episodes` = {values['total_episodes']} is less than one PPO batch of {batch} episodes "
               "(per_device_train_batch_size x gradient_accumulation_steps x num_mini_batches x processes); "
               "raise it or shrink the batch")


@rule
def _ptx_needs_data(values: dict[str, Any], classes: set[str]) -> Iterable[str]:
    if "PPOConfig" in classes and values.get("ptx_coef", 0) > 0 and not values.get("ptx_dataset"):
        yield (f"`ptx_coef` = {values['ptx_coef']} needs `ptx_dataset` (pretraining or SFT text); set one, or "
               "`ptx_coef: 0`")


@rule
def _groups_divide_the_generation_batch(values: dict[str, Any], classes: set[str]) -> Iterable[str]:
    if not classes & {"GRPOConfig", "RLOOConfig"} or values.get("num_generations") is None:
        return
    generations = values["num_generations"]
    batch = values.get("generation_batch_size")
    how = "generation_batch_size"
    if batch is None:
        steps = values.get("steps_per_generation") or values["gradient_accumulation_steps"]
        batch = values["per_device_train_batch_size"] * _world_size() * steps
        how = ("per_device_train_batch_size x processes x steps_per_generation (default: "
               "gradient_accumulation_steps)")
    if batch % generations:
        yield (f"`num_generations` = {generations} must divide the generation batch of {batch} prompts x "
               f"completions ({how}); make the batch a multiple of it")
    evaluated = str(getattr(values.get("eval_strategy"), "value", values.get("eval_strategy"))) != "no"
    eval_generations = values.get("num_generations_eval") or generations
    eval_batch = values["per_device_eval_batch_size"] * _world_size()
    if evaluated and eval_batch % eval_generations:
        yield (f"`num_generations_eval` (default `num_generations`) = {eval_generations} must divide the evaluation "
               f"batch of {eval_batch} (per_device_eval_batch_size x processes)")


@rule
def _entropy_bounds(values: dict[str, Any], classes: set[str]) -> Iterable[str]:
    if "GRPOConfig" in classes and values.get("entropy_coef_min", 0) > values.get("entropy_coef_max", INF):
        yield (f"`entropy_coef_min` = {values['entropy_coef_min']} is above `entropy_coef_max` = "
               f"{values['entropy_coef_max']}")


@rule
def _names_match_paths(values: dict[str, Any], classes: set[str]) -> Iterable[str]:
    if "EvalArguments" in classes and values.get("policy_names") and \
            len(values["policy_names"]) != len(values.get("policy_paths") or []):
        yield (f"`policy_names` has {len(values['policy_names'])} names for {len(values.get('policy_paths') or [])} "
               "`policy_paths`; give one name per policy, or none")


__all__ = ["INHERITED_RANGES", "INHERITED_ROLES", "RULES", "STAGE_ROLES", "check_roles", "field_roles", "Spec", "check_arguments", "check_values", "declared_spec", "field_specs",
           "parse_spec", "rule"]
