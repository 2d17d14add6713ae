"""The recipe parser: YAML defaults, flag overrides, and errors that name the key, the file and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO, load_recipe
from trl import ModelConfig, SFTConfig

from rlhf_recipes.config import ConfigError, ScriptArguments, check_config_keys, parse_recipe_args

DATACLASSES = (ScriptArguments, SFTConfig, ModelConfig)
DEMO_SFT = REPO / "recipes/demo/sft.yaml"


def recipe_with(tmp_path: Path, extra: str) -> Path:
    """The demo SFT recipe plus `extra` lines."""
    path = tmp_path / "recipe.yaml"
    path.write_text(DEMO_SFT.read_text() + extra)
    return path


def test_every_shipped_sft_recipe_has_only_known_keys():
    for recipe in (DEMO_SFT, REPO / "recipes/gpt2/sft.yaml"):
        assert check_config_keys(recipe, DATACLASSES)


@pytest.mark.parametrize("family", ["gpt2", "smollm2"])
@pytest.mark.parametrize("stage", ["sft", "reward", "ppo"])
def test_every_model_family_recipe_parses(family, stage):
    """Keys and values (choices, types) of each real recipe; bf16 off only because this CPU has none."""
    module = load_recipe(stage)
    recipe = REPO / f"recipes/{family}/{stage}.yaml"
    script_args, training_args, model_args = parse_recipe_args(module.DATACLASSES,
                                                               ["--config", str(recipe), "--bf16", "false"])
    assert training_args.output_dir == f"runs/{family}/{stage}"
    assert script_args.conversation_template == ("chat_template" if family == "smollm2" else "auto")


def test_unknown_yaml_key_names_the_key_the_file_and_the_close_match(tmp_path):
    path = recipe_with(tmp_path, "lerning_rate: 0.1\n")
    with pytest.raises(ConfigError) as err:
        parse_recipe_args(DATACLASSES, ["--config", str(path)])
    message = str(err.value)
    assert "'lerning_rate'" in message
    assert str(path) in message
    assert "Did you mean 'learning_rate'?" in message


def test_unknown_yaml_key_without_a_close_match_still_names_key_and_file(tmp_path):
    path = recipe_with(tmp_path, "zzz_qqq: 1\n")
    with pytest.raises(ConfigError) as err:
        parse_recipe_args(DATACLASSES, ["--config", str(path)])
    assert "'zzz_qqq'" in str(err.value) and str(path) in str(err.value)
    assert "Did you mean" not in str(err.value)


def test_yaml_that_is_not_a_mapping_or_missing(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- learning_rate\n- 0.1\n")
    with pytest.raises(ConfigError, match="mapping"):
        parse_recipe_args(DATACLASSES, ["--config", str(path)])
    with pytest.raises(ConfigError, match="does not exist"):
        parse_recipe_args(DATACLASSES, ["--config", str(tmp_path / "nope.yaml")])


def test_yaml_sets_values_and_a_flag_overrides_one():
    script_args, training_args, model_args = parse_recipe_args(DATACLASSES, ["--config", str(DEMO_SFT)])
    assert training_args.learning_rate == pytest.approx(1.0e-3)
    assert training_args.num_train_epochs == 2
    assert script_args.dataset_format == "prompt_completion"
    assert model_args.use_peft is False

    script_args, training_args, model_args = parse_recipe_args(DATACLASSES, [
        "--config", str(DEMO_SFT), "--learning_rate", "0.25", "--dataset_format", "auto", "--use_peft",
        "--lora_target_modules", "c_attn", "c_proj",
    ])
    assert training_args.learning_rate == pytest.approx(0.25)  # flag beats YAML
    assert script_args.dataset_format == "auto"
    assert model_args.use_peft is True
    assert list(model_args.lora_target_modules) == ["c_attn", "c_proj"]
    assert training_args.num_train_epochs == 2  # YAML values the flags did not touch stay
    assert training_args.max_length == 128
    assert model_args.model_name_or_path == "runs/demo/base"


def test_unknown_flag_is_a_config_error_naming_it():
    with pytest.raises(ConfigError) as err:
        parse_recipe_args(DATACLASSES, ["--config", str(DEMO_SFT), "--learnig_rate", "0.1"])
    assert "--learnig_rate" in str(err.value)


@pytest.mark.parametrize(("flag", "value"), [("--learning_rate", "fast"), ("--invalid_rows", "maybe")])
def test_bad_flag_value_errors_naming_the_flag(flag, value, capsys):
    with pytest.raises(SystemExit) as err:
        parse_recipe_args(DATACLASSES, ["--config", str(DEMO_SFT), flag, value])
    assert err.value.code == 2
    assert flag in capsys.readouterr().err
