"""The recipe parser: YAML defaults, flag overrides, and errors that name the key, the file and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import REPO, load_recipe
from trl import ModelConfig, SFTConfig

from rlhf_recipes.config import ConfigError, ScriptArguments, check_config_keys, help_groups, parse_recipe_args

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


@pytest.mark.parametrize("family", ["gpt2", "smollm2"])
@pytest.mark.parametrize("stage", ["sft", "reward", "ppo"])
def test_real_recipes_run_on_a_cpu_with_use_cpu(family, stage, monkeypatch):
    """What `make ... CPU=1` adds: without a GPU, TRL's configs refuse the recipes' `bf16: true` unless `use_cpu` is
    set (our PPOConfig takes bf16 on a CPU as autocast either way)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    module = load_recipe(stage)
    recipe = ["--config", str(REPO / f"recipes/{family}/{stage}.yaml")]
    if not torch.cuda.is_available() and stage != "ppo":
        with pytest.raises(ConfigError, match="bf16/gpu"):
            parse_recipe_args(module.DATACLASSES, recipe)
    _, training_args, _ = parse_recipe_args(module.DATACLASSES, [*recipe, "--use_cpu", "true"])
    assert training_args.bf16 and training_args.device.type == "cpu"


@pytest.mark.parametrize("family", ["gpt2", "smollm2"])
def test_evaluate_config_of_each_model_family_compares_its_own_runs(family):
    module = load_recipe("evaluate")
    script_args, eval_args, _ = parse_recipe_args(module.DATACLASSES,
                                                  ["--config", str(REPO / f"recipes/{family}/evaluate.yaml")])
    assert eval_args.policy_paths == [f"runs/{family}/sft", f"runs/{family}/ppo"]
    assert eval_args.reward_model_path == f"runs/{family}/reward" and script_args.dataset_format == "hh"


def test_help_lists_our_fields_and_help_all_every_field_grouped(capsys):
    module = load_recipe("ppo")
    groups = dict(help_groups(module.DATACLASSES))
    assert "ptx_coef" in groups["PPOConfig (this project)"] and "invalid_rows" in groups["ScriptArguments (this project)"]
    assert "learning_rate" in groups["transformers TrainingArguments"] and "use_peft" in groups["trl ModelConfig"]
    assert not any("learning_rate" in names for title, names in groups.items() if "this project" in title)
    with pytest.raises(SystemExit) as stop:
        parse_recipe_args(module.DATACLASSES, ["--help"])
    short = capsys.readouterr().out
    assert stop.value.code == 0 and "--ptx_coef" in short and "--learning_rate" not in short and "--help-all" in short
    assert short.index("ScriptArguments (this project)") < short.index("PPOConfig (this project)")
    with pytest.raises(SystemExit):
        parse_recipe_args(module.DATACLASSES, ["--config", str(REPO / "recipes/demo/ppo.yaml"), "--help-all"])
    full = capsys.readouterr().out
    assert full.index("--ptx_coef") < full.index("transformers TrainingArguments:") < full.index("--learning_rate")
    assert "--dataset-format" not in full  # one spelling per flag
    assert len(short.splitlines()) < len(full.splitlines()) / 4


def test_a_bad_flag_value_prints_a_short_usage_not_every_flag(capsys):
    with pytest.raises(SystemExit) as stop:
        parse_recipe_args(load_recipe("ppo").DATACLASSES, ["--dataset_format", "prompts"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "invalid choice: 'prompts'" in err and len(err.splitlines()) <= 3, err


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
