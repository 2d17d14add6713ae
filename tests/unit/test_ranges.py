"""Every setting of every command has a declared range, choices or a reason to be free, and a value outside it stops
the command with exit code 2 and a message naming the field, before anything loads."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings
from functools import cache

import pytest
import yaml
from conftest import REPO, load_recipe

from rlhf_recipes.config import ConfigError, parse_recipe_args, run_main, user_set_fields
from rlhf_recipes.frontier import FrontierArguments
from rlhf_recipes.ranges import _unwrap, check_values, field_specs, parse_spec

RECIPES = sorted(p.stem for p in (REPO / "recipes").glob("*.py"))
COMMANDS = {**{name: load_recipe(name).DATACLASSES for name in RECIPES}, "frontier": (FrontierArguments,)}


@cache
def every_field() -> dict[str, tuple[str, type, object, object]]:
    """field name -> (command, dataclass, spec, annotation), the first command that has the field."""
    out = {}
    for command, dataclass_types in COMMANDS.items():
        for cls in dataclass_types:
            for name, (spec, annotation) in field_specs(cls).items():
                out.setdefault(name, (command, cls, spec, annotation))
    return out


def test_every_field_of_every_command_has_a_range_choices_or_is_declared_free():
    undeclared = [f"{cls.__name__}.{name}" for command, types in COMMANDS.items() for cls in types
                  for name, (spec, _) in field_specs(cls).items() if spec is None]
    assert not undeclared, f"numeric fields without a declared range: {undeclared}"
    specs = [spec for _, _, spec, _ in every_field().values()]
    ranged = sum(1 for s in specs if s.intervals)
    enumerated = sum(1 for s in specs if s.choices is not None)
    assert ranged >= 125 and enumerated >= 20, (ranged, enumerated)  # not all silently free
    assert len(COMMANDS) >= 12  # the 11 recipes and the frontier


def test_every_default_is_inside_its_own_range():
    import dataclasses

    for command, types in COMMANDS.items():
        values = {}
        for cls in types:
            for f in dataclasses.fields(cls):
                if f.init:
                    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                    values.setdefault(f.name, default)
        if command in ("grpo", "rloo"):
            values["per_device_train_batch_size"] = 8  # TRL's default batch (8) divides its 8 generations
        check_values(types, {k: v for k, v in values.items() if v is not dataclasses.MISSING})


def test_the_range_syntax():
    spec = parse_spec("-1 or [1, inf)")
    assert spec.accepts(-1) and spec.accepts(1) and spec.accepts(10**9)
    assert not spec.accepts(0) and not spec.accepts(-2) and not spec.accepts(math.nan) and not spec.accepts(True)
    half_open = parse_spec("(0, 1]")
    assert half_open.accepts(1.0) and not half_open.accepts(0.0) and not half_open.accepts(math.inf)
    assert parse_spec(["k1", "k3"]).accepts("k3") and not parse_spec(["k1", "k3"]).accepts("k2")
    assert parse_spec("free: set by the launcher").free == "set by the launcher"
    with pytest.raises(ValueError, match="Bad range declaration"):
        parse_spec(">= 1")


def outside(spec, annotation):
    """A value just outside the declared range or choices (None when every value of the type is allowed)."""
    base, _, is_list = _unwrap(annotation)
    if spec.choices is not None:
        value = "not-a-choice"
    else:
        interval = spec.intervals[0]
        if not math.isinf(interval.low):
            value = interval.low - 1 if base is int or interval.low_closed else interval.low
        elif not math.isinf(interval.high):
            value = interval.high + 1
        else:
            return None
        value = int(value) if base is int else float(value)
        if any(value in i for i in spec.intervals):  # "-1 or [1, inf)": -2 is outside
            value = min(i.low for i in spec.intervals) - 1
    return [value] if is_list else value


CHECKED = sorted(name for name, (_, _, spec, annotation) in every_field().items()
                 if spec.free is None and outside(spec, annotation) is not None)


@pytest.mark.parametrize("name", CHECKED)
def test_a_value_outside_the_range_exits_2_naming_the_field_and_the_value(name, tmp_path, capsys):
    command, cls, spec, annotation = every_field()[name]
    value = outside(spec, annotation)
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump({name: value}))  # through a YAML: argparse never sees it, our check must
    argv = ["--config", str(config)]
    if any("output_dir" in {f for f in field_specs(t)} for t in COMMANDS[command]) and name != "output_dir":
        argv += ["--output_dir", str(tmp_path / "out")]

    def main(*args):
        pytest.fail(f"{command} ran with {name}={value!r}")

    with pytest.raises(SystemExit) as exit_info:
        run_main(main, COMMANDS[command], argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"`{name}`" in err and "Traceback" not in err
    assert repr(value[0] if isinstance(value, list) else value) in err


@pytest.mark.parametrize("command, argv, words", [
    ("ppo", ["--num_mini_batches", "0"], ["`num_mini_batches` = 0", "[1, ∞)"]),
    ("ppo", ["--total_episodes", "4", "--per_device_train_batch_size", "8"],
     ["`total_episodes` = 4 is less than one PPO batch of 8"]),
    ("grpo", ["--num_generations", "1"], ["`num_generations` = 1", "[2, ∞)"]),
    ("grpo", ["--num_generations", "3", "--per_device_train_batch_size", "4"], ["`num_generations` = 3 must divide"]),
    ("iterate", ["--rounds", "-1"], ["`rounds` = -1"]),
    ("best_of_n", ["--n", "0"], ["`n` = 0"]),
    ("evaluate", ["--policy_paths", "a", "b", "--policy_names", "x"], ["`policy_names` has 1 names for 2"]),
])
def test_the_cases_that_slipped_through_are_refused_in_process(command, argv, words, tmp_path):
    with pytest.raises(ConfigError) as err:
        parse_recipe_args(COMMANDS[command], argv + (["--output_dir", str(tmp_path)] if command in ("ppo", "grpo")
                                                     else []))
    for word in words:
        assert word in str(err.value)


# Two real command lines suffice here (the rest is in-process above); each costs an interpreter start.
@pytest.mark.parametrize("command, argv, field", [
    ("ppo", ["--num_mini_batches", "0"], "num_mini_batches"),
    ("iterate", ["--rounds", "-1"], "rounds"),
])
def test_the_real_command_exits_2_naming_the_field(command, argv, field, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, str(REPO / "recipes" / f"{command}.py"), *argv,
                             *(["--output_dir", str(tmp_path)] if command in ("ppo", "grpo") else [])],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"`{field}`" in result.stderr and "Traceback" not in result.stderr


def test_unset_trl_defaults_print_no_deprecation_warning_and_set_ones_are_kept(tmp_path):
    for command in ("sft", "reward", "grpo", "rloo", "ppo"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            _, args, _ = parse_recipe_args(COMMANDS[command], ["--output_dir", str(tmp_path)])
        expected = command != "ppo"  # TRL's configs default to checkpointing; our PPOConfig does not
        assert args.activation_checkpointing is expected and args.gradient_checkpointing is expected
        assert user_set_fields(args) == {"output_dir"}
    # The user's own (deprecated) choice still wins, with transformers' warning.
    with pytest.warns(FutureWarning, match="gradient_checkpointing"):
        _, args, _ = parse_recipe_args(COMMANDS["sft"], ["--output_dir", str(tmp_path),
                                                        "--gradient_checkpointing", "false"])
    assert args.activation_checkpointing is False


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from gpt2_like import save_gpt2_like

    return save_gpt2_like(tmp_path_factory.mktemp("tiny") / "model")  # a 64-token context


def test_an_unset_length_becomes_the_context_with_a_warning_and_a_set_one_beyond_it_is_an_error(tiny_model, tmp_path,
                                                                                                caplog):
    from rlhf_recipes.models import ContextLengthError, check_lengths

    model = str(tiny_model)
    _, sft, _ = parse_recipe_args(COMMANDS["sft"], ["--output_dir", str(tmp_path)])
    assert sft.max_length == 1024  # TRL's default, which the user never set
    with caplog.at_level("WARNING", logger="rlhf_recipes.models"):
        check_lengths(sft, model, stage="SFT", fill_unset=("max_length",))
    assert sft.max_length == 64 and "max_length is unset; using 64" in caplog.text

    _, grpo, _ = parse_recipe_args(COMMANDS["grpo"], ["--output_dir", str(tmp_path)])
    caplog.clear()
    with caplog.at_level("WARNING", logger="rlhf_recipes.models"):
        check_lengths(grpo, model, stage="GRPO", generation=(None, "max_completion_length"))
    assert grpo.max_completion_length == 32 and "max_completion_length is unset; using 32" in caplog.text

    for command, flag, field in (("sft", "--max_length", "max_length"),
                                 ("grpo", "--max_completion_length", "max_completion_length")):
        _, args, _ = parse_recipe_args(COMMANDS[command], ["--output_dir", str(tmp_path), flag, "512"])
        with pytest.raises(ContextLengthError, match=f"{field} 512 is longer than the 64-token context"):
            check_lengths(args, model, stage=command, fill_unset=("max_length",),
                          generation=(None, "max_completion_length") if command == "grpo" else None)
    # Set in a YAML counts as set too.
    config = tmp_path / "sft.yaml"
    config.write_text("max_length: 100\n")
    _, args, _ = parse_recipe_args(COMMANDS["sft"], ["--config", str(config), "--output_dir", str(tmp_path)])
    with pytest.raises(ContextLengthError, match="max_length 100 is longer"):
        check_lengths(args, model, stage="SFT", fill_unset=("max_length",))
