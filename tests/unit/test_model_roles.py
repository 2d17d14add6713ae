"""Each model path has a role; a checkpoint of the wrong kind is refused from its config, before any weights load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, load_recipe
from gpt2_like import save_gpt2_like

from rlhf_recipes.config import parse_recipe_args
from rlhf_recipes.models import ModelError, check_model_role, checkpoint_kind, load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A tiny causal LM, the same with a one-label head (a reward model), a 2-label classifier, and adapters."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    root = tmp_path_factory.mktemp("roles")
    causal = save_gpt2_like(root / "causal")
    out = {"causal": causal}
    for name, labels in (("reward", 1), ("classifier", 2)):
        model = AutoModelForSequenceClassification.from_pretrained(causal, num_labels=labels)
        model.save_pretrained(root / name, safe_serialization=True)
        AutoTokenizer.from_pretrained(causal).save_pretrained(root / name)
        out[name] = root / name
    for name, task in (("causal_adapter", "CAUSAL_LM"), ("reward_adapter", "SEQ_CLS"), ("untyped_adapter", None)):
        folder = root / name
        folder.mkdir()
        config = {"base_model_name_or_path": str(causal), "peft_type": "LORA"}
        if task:
            config["task_type"] = task
        (folder / "adapter_config.json").write_text(json.dumps(config))
        out[name] = folder
    return out


def test_the_kind_is_read_from_the_config(models):
    assert checkpoint_kind(str(models["causal"]))[0] == "causal_lm"
    assert checkpoint_kind(str(models["reward"]))[0] == "seq_cls"
    assert checkpoint_kind(str(models["classifier"]))[0] == "seq_cls_multi"
    assert checkpoint_kind(str(models["causal_adapter"]))[0] == "causal_lm"
    assert checkpoint_kind(str(models["reward_adapter"]))[0] == "seq_cls"
    kind, words = checkpoint_kind(str(models["untyped_adapter"]))  # no task type: its base decides
    assert kind == "causal_lm" and "adapter" in words
    assert checkpoint_kind("no-such/uncached-model") is None  # unknown without the network: left to the loader


@pytest.mark.parametrize("model, role, words", [
    ("reward", "policy", ["one-label sequence classifier", "needs a causal language model"]),
    ("classifier", "policy", ["2-label sequence classifier"]),
    ("causal", "reward", ["causal language model (GPT2LMHeadModel)", "needs a reward model", "recipes/reward.py"]),
    ("causal_adapter", "reward", ["LoRA adapter over the causal language model"]),
    ("classifier", "reward", ["2-label sequence classifier", "not a scalar reward model"]),
    ("causal", "value", ["needs a value model"]),
    ("classifier", "reward_base", ["2-label"]),
])
def test_a_checkpoint_of_the_wrong_kind_is_refused_naming_path_kind_and_need(models, model, role, words):
    with pytest.raises(ModelError) as err:
        check_model_role(str(models[model]), role, "some_path")
    message = str(err.value)
    assert f"`some_path` = {models[model]} is " in message
    for word in words:
        assert word in message


@pytest.mark.parametrize("model, role", [("causal", "policy"), ("causal_adapter", "policy"), ("reward", "reward"),
                                         ("reward_adapter", "reward"), ("reward", "value"), ("causal", "reward_base"),
                                         ("reward", "reward_base")])
def test_the_right_kind_passes(models, model, role):
    check_model_role(str(models[model]), role)


def test_the_loader_refuses_before_any_weights_load(models, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from trl import ModelConfig

    from rlhf_recipes.models import load_tokenizer

    def must_not_load(*args, **kwargs):
        raise AssertionError("weights loaded before the role was checked")

    tokenizer = load_tokenizer(str(models["causal"]))
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", must_not_load)
    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", must_not_load)
    with pytest.raises(ModelError, match="needs a causal language model"):
        load_model(ModelConfig(model_name_or_path=str(models["reward"])), tokenizer)
    with pytest.raises(ModelError, match="needs a reward model"):
        load_model(ModelConfig(model_name_or_path=str(models["causal"])), tokenizer, kind="reward", role="reward")


@pytest.mark.parametrize("command, argv, field", [
    ("sample", ["--model_name_or_path", "{reward}"], "model_name_or_path"),
    ("chat", ["--model_name_or_path", "{reward}"], "model_name_or_path"),
    ("sft", ["--model_name_or_path", "{reward}"], "model_name_or_path"),
    ("ppo", ["--sft_model_path", "{causal}", "--reward_model_path", "{causal}"], "reward_model_path"),
    ("ppo", ["--reward_model_path", "{reward}", "--value_model_path", "{causal}"], "value_model_path"),
    ("grpo", ["--reward_model_path", "{causal}"], "reward_model_path"),
    ("rloo", ["--reward_model_path", "{causal}"], "reward_model_path"),
    ("best_of_n", ["--policy_path", "{causal}", "--reward_model_path", "{causal}"], "reward_model_path"),
    ("best_of_n", ["--policy_path", "{reward}", "--reward_model_path", "{reward}"], "policy_path"),
    ("evaluate", ["--policy_paths", "{causal}", "{reward}"], "policy_paths"),
    ("sample", ["--model_name_or_path", "{causal}", "--reward_model_path", "{classifier}"], "reward_model_path"),
    ("label", ["--chat_model_path", "{reward}"], "chat_model_path"),
])
def test_every_command_refuses_the_wrong_kind_when_it_parses(models, command, argv, field, tmp_path):
    argv = [a.format(**{k: str(v) for k, v in models.items()}) for a in argv]
    if command in ("sft", "ppo", "grpo", "rloo"):
        argv += ["--output_dir", str(tmp_path)]
    with pytest.raises(ModelError, match=f"`{field}` = "):
        parse_recipe_args(load_recipe(command).DATACLASSES, argv)


def test_the_reward_stage_puts_a_head_on_a_causal_lm(models, tmp_path):
    parse_recipe_args(load_recipe("reward").DATACLASSES, ["--model_name_or_path", str(models["causal"]),
                                                          "--output_dir", str(tmp_path)])


@pytest.mark.parametrize("command", ["sample", "chat"])
def test_sampling_or_chatting_with_a_reward_model_exits_2(models, command, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, str(REPO / "recipes" / f"{command}.py"), "--model_name_or_path",
                             str(models["reward"]), "--output_file" if command == "sample" else "--seed",
                             str(tmp_path / "s.jsonl") if command == "sample" else "0"],
                            capture_output=True, text=True, env=env, timeout=120, input="")
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"`model_name_or_path` = {models['reward']} is a one-label sequence classifier" in result.stderr
    assert "Traceback" not in result.stderr
