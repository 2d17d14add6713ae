"""The shared model/tokenizer loader: pad token, one embedding resize, LoRA, adapter merging, safe defaults."""

from __future__ import annotations

import dataclasses
import inspect
import json
import shutil
from pathlib import Path

import pytest
import torch
from gpt2_like import save_gpt2_like
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, GPT2LMHeadModel, PreTrainedModel
from trl import ModelConfig, SFTConfig

from rlhf_recipes.models import PAD_TOKEN, load_model, load_tokenizer

SENTENCE = "I rented this war film on a whim, and the acting was lovely."


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def gpt2_like_dir(tmp_path_factory) -> Path:
    return save_gpt2_like(tmp_path_factory.mktemp("gpt2-like"))


@pytest.fixture(params=["demo", "gpt2_like"])
def base(request) -> tuple[Path, bool]:
    """(base model folder, whether its tokenizer lacks a pad token as GPT-2's does)."""
    if request.param == "demo":
        return request.getfixturevalue("demo_dir") / "base", False
    return request.getfixturevalue("gpt2_like_dir"), True


@pytest.fixture
def resize_calls(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = PreTrainedModel.resize_token_embeddings

    def spy(self, new_num_tokens=None, *args, **kwargs):
        calls.append(new_num_tokens)
        return original(self, new_num_tokens, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "resize_token_embeddings", spy)
    return calls


def model_config(path, **kwargs) -> ModelConfig:
    return ModelConfig(model_name_or_path=str(path), dtype="float32", **kwargs)


def logits(model, tokenizer) -> torch.Tensor:
    ids = torch.tensor([tokenizer(SENTENCE)["input_ids"]])
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def lora_model(path, tokenizer, seed: int = 0):
    """A LoRA model on `path` whose adapters are not the identity (lora_B randomised), as after training."""
    model = load_model(model_config(path, use_peft=True, lora_r=8, lora_target_modules=["c_attn"]), tokenizer)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return model


# ---------------------------------------------------------------------------------------------------------------
# Pad token and embeddings
# ---------------------------------------------------------------------------------------------------------------
def test_pad_token_differs_from_eos(base):
    path, lacks_pad = base
    raw = json.loads((path / "tokenizer_config.json").read_text())
    assert ("pad_token" not in raw) == lacks_pad
    tokenizer = load_tokenizer(str(path))
    assert tokenizer.pad_token is not None and tokenizer.eos_token is not None
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.pad_token == PAD_TOKEN
    assert tokenizer.padding_side == "right"
    assert load_tokenizer(str(path), padding_side="left").padding_side == "left"


def test_embeddings_resized_exactly_once_and_the_choice_travels_with_the_checkpoint(base, resize_calls, tmp_path):
    path, lacks_pad = base
    vocab_before = load_file(path / "model.safetensors")["transformer.wte.weight"].shape[0]
    tokenizer = load_tokenizer(str(path))
    assert len(tokenizer) == vocab_before + int(lacks_pad)

    model = load_model(model_config(path), tokenizer)
    assert len(resize_calls) == int(lacks_pad)  # once when the pad token is new, never otherwise
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert model.get_output_embeddings().weight.shape[0] == len(tokenizer)
    assert model.config.pad_token_id == tokenizer.pad_token_id != model.config.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id

    # The next stage loads the saved folder: same tokens, no second resize, same pad row.
    model.save_pretrained(tmp_path, safe_serialization=True)
    tokenizer.save_pretrained(tmp_path)
    reloaded_tokenizer = load_tokenizer(str(tmp_path))
    assert reloaded_tokenizer.get_vocab() == tokenizer.get_vocab()
    assert reloaded_tokenizer.pad_token_id == tokenizer.pad_token_id
    reloaded = load_model(model_config(tmp_path), reloaded_tokenizer)
    assert len(resize_calls) == int(lacks_pad)
    assert torch.equal(reloaded.get_input_embeddings().weight, model.get_input_embeddings().weight)
    assert torch.allclose(logits(reloaded, tokenizer), logits(model, tokenizer))


# ---------------------------------------------------------------------------------------------------------------
# LoRA
# ---------------------------------------------------------------------------------------------------------------
def test_lora_freezes_the_base_and_trains_the_adapters(base):
    path, _ = base
    tokenizer = load_tokenizer(str(path))
    # One module name, as `--lora_target_modules c_attn` gives it (TRL turns a one-item list into a string).
    args = model_config(path, use_peft=True, lora_r=8, lora_target_modules=["c_attn"])
    model = load_model(args, tokenizer)
    assert isinstance(model, PeftModel)
    n_layer = model.config.n_layer
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert len(trainable) == 2 * n_layer  # lora_A and lora_B of every layer's c_attn
    assert all("lora_" in n and ".c_attn." in n for n in trainable)
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)

    # One optimisation step moves the adapters and nothing else.
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    ids = torch.tensor([tokenizer(SENTENCE)["input_ids"]])
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable
    assert any("lora_B" in n for n in changed)


def test_loading_an_adapter_folder_merges_it(base, resize_calls, tmp_path):
    path, lacks_pad = base
    tokenizer = load_tokenizer(str(path))
    adapter = lora_model(path, tokenizer)
    expected = logits(adapter, tokenizer)
    base_logits = logits(load_model(model_config(path), tokenizer), tokenizer)
    assert not torch.allclose(expected, base_logits, atol=1e-4)  # the adapter matters
    adapter.save_pretrained(tmp_path / "adapter")
    tokenizer.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter/adapter_config.json").is_file()
    resize_calls.clear()

    merged = load_model(model_config(tmp_path / "adapter"), load_tokenizer(str(tmp_path / "adapter")))
    assert type(merged) is GPT2LMHeadModel and not isinstance(merged, PeftModel)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert len(resize_calls) == int(lacks_pad)  # the base under the adapter, once
    assert torch.allclose(logits(merged, tokenizer), expected, atol=1e-5)

    # An adapter folder saved without its tokenizer takes the base's.
    bare = tmp_path / "bare"
    shutil.copytree(tmp_path / "adapter", bare,
                    ignore=shutil.ignore_patterns("tokenizer*", "special_tokens_map.json", "vocab.json", "merges.txt"))
    bare_tokenizer = load_tokenizer(str(bare))
    assert bare_tokenizer.get_vocab() == tokenizer.get_vocab()
    assert torch.allclose(logits(load_model(model_config(bare), bare_tokenizer), tokenizer), expected, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Safe defaults
# ---------------------------------------------------------------------------------------------------------------
def test_only_safetensors_weights_are_loaded(gpt2_like_dir, tmp_path):
    tokenizer = load_tokenizer(str(gpt2_like_dir))
    pickled = tmp_path / "pickled"
    shutil.copytree(gpt2_like_dir, pickled, ignore=shutil.ignore_patterns("*.safetensors"))
    state = AutoModelForCausalLM.from_pretrained(gpt2_like_dir).state_dict()
    torch.save(state, pickled / "pytorch_model.bin")  # genuine weights, just pickled
    with pytest.raises(OSError, match="safetensors"):
        load_model(model_config(pickled), tokenizer)

    adapter_dir = tmp_path / "adapter"
    lora_model(gpt2_like_dir, tokenizer).save_pretrained(adapter_dir)
    weights = load_file(adapter_dir / "adapter_model.safetensors")
    (adapter_dir / "adapter_model.safetensors").unlink()
    torch.save(weights, adapter_dir / "adapter_model.bin")
    with pytest.raises(OSError, match="safetensors"):
        load_model(model_config(adapter_dir), tokenizer)


def test_trust_remote_code_defaults_to_false(gpt2_like_dir, tmp_path):
    for function in (load_model, load_tokenizer):
        assert inspect.signature(function).parameters["trust_remote_code"].default is False
    assert {f.name: f.default for f in dataclasses.fields(SFTConfig)}["trust_remote_code"] is False

    # A checkpoint that ships its own code is refused, and the code never runs.
    custom = tmp_path / "custom"
    shutil.copytree(gpt2_like_dir, custom)
    sentinel = tmp_path / "custom-code-ran"
    (custom / "custom_gpt.py").write_text(
        f"from pathlib import Path\nPath({str(sentinel)!r}).write_text('ran')\n"
        "from transformers import GPT2Config, GPT2LMHeadModel\n"
        "class CustomConfig(GPT2Config):\n    model_type = 'custom_gpt'\n"
        "class CustomModel(GPT2LMHeadModel):\n    config_class = CustomConfig\n"
    )
    config = json.loads((custom / "config.json").read_text())
    config.update(model_type="custom_gpt", auto_map={"AutoConfig": "custom_gpt.CustomConfig",
                                                     "AutoModelForCausalLM": "custom_gpt.CustomModel"})
    (custom / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_model(model_config(custom), load_tokenizer(str(custom)))
    assert not sentinel.exists()


def test_fused_gelu_is_the_same_function_and_leaves_the_saved_config_alone(demo_dir, tmp_path):
    from transformers.activations import GELUTanh, NewGELUActivation

    from rlhf_recipes.models import use_fused_gelu

    tokenizer = load_tokenizer(str(demo_dir / "base"))
    model = load_model(model_config(demo_dir / "base"), tokenizer)
    before = logits(model, tokenizer)
    assert use_fused_gelu(model) == model.config.n_layer
    assert not any(isinstance(m, NewGELUActivation) for m in model.modules())
    assert sum(isinstance(m, GELUTanh) for m in model.modules()) == model.config.n_layer
    torch.testing.assert_close(logits(model, tokenizer), before, atol=1e-5, rtol=1e-5)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["activation_function"] == "gelu_new"
    assert use_fused_gelu(model) == 0  # idempotent
