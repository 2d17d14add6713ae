"""Stage 1 end to end on the demo: the recipe's own trainer is inspected (labels, EOS), then its saved outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import REPO, load_recipe
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from trl import ModelConfig

from rlhf_recipes.config import parse_recipe_args
from rlhf_recipes.models import load_model, load_tokenizer
from rlhf_recipes.outputs import check_hub_token

DEMO_YAML = str(REPO / "recipes/demo/sft.yaml")
N_TRAIN, N_EVAL = 384, 64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sft_args(demo_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["--config", DEMO_YAML, "--model_name_or_path", str(demo_dir / "base"),
            "--dataset_name", str(demo_dir / "data/sft"), "--output_dir", str(out), "--save_strategy", "no",
            "--max_train_samples", str(N_TRAIN), "--max_eval_samples", str(N_EVAL),
            "--per_device_train_batch_size", "16", "--logging_steps", "4", *extra]


def run_sft(args: list[str]):
    """Run recipes/sft.py's main() as the command line would, keeping the trainer it builds."""
    module = load_recipe("sft")
    built = []

    class Recorded(module.SFTTrainer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            built.append(self)

    module.SFTTrainer = Recorded
    metrics = module.main(*parse_recipe_args(module.DATACLASSES, args))
    return metrics, built


def forward(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


@pytest.fixture(scope="module")
def probe(demo_dir) -> torch.Tensor:
    tokenizer = load_tokenizer(str(demo_dir / "base"))
    texts = ["The new thriller by Anna Lee was", "I rented this comedy on a whim, and it was a dull story."]
    ids = tokenizer(texts, padding=True, return_tensors="pt")
    return ids["input_ids"][:, : int(ids["attention_mask"].sum(-1).min())]


@pytest.fixture(scope="module")
def full_run(demo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft-full")
    # A constant 5e-4 lowers the held-out loss steadily from the first steps (the demo's 1e-3 with cosine decay
    # first overshoots for a few steps on a base pretrained this briefly).
    metrics, (trainer,) = run_sft(sft_args(demo_dir, out, "--max_steps", "12", "--learning_rate", "5e-4",
                                           "--lr_scheduler_type", "constant"))
    return metrics, trainer, out


@pytest.fixture(scope="module")
def lora_run(demo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft-lora")
    metrics, (trainer,) = run_sft(sft_args(demo_dir, out, "--max_steps", "8", "--use_peft", "--lora_r", "8",
                                           "--lora_target_modules", "c_attn", "--merge_adapter"))
    return metrics, trainer, out


# ---------------------------------------------------------------------------------------------------------------
# What the trainer learns from
# ---------------------------------------------------------------------------------------------------------------
def test_labels_mask_the_prompt_and_keep_the_completion(full_run):
    _, trainer, _ = full_run
    tokenizer = trainer.processing_class
    dataset = trainer.train_dataset
    assert len(dataset) == N_TRAIN
    for row in dataset:
        prompt_ids = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        n = len(prompt_ids)
        assert row["input_ids"][:n] == prompt_ids
        assert row["labels"][:n] == [-100] * n
        assert row["labels"][n:] == row["input_ids"][n:]
        assert tokenizer.decode(row["labels"][n:]) == row["completion"]  # the completion, EOS included

    # What the collator hands the model: padding is masked out of the loss and the attention too.
    rows = [dataset[i] for i in range(8)]
    batch = trainer.data_collator(rows)
    for i, row in enumerate(rows):
        length = len(row["input_ids"])
        n_prompt = row["labels"].count(-100)
        labels, input_ids = batch["labels"][i].tolist(), batch["input_ids"][i].tolist()
        assert labels[:n_prompt] == [-100] * n_prompt
        assert labels[n_prompt:length] == input_ids[n_prompt:length] == row["input_ids"][n_prompt:]
        assert labels[length:] == [-100] * (len(labels) - length)
        assert input_ids[length:] == [tokenizer.pad_token_id] * (len(labels) - length)
        assert batch["attention_mask"][i].tolist() == [1] * length + [0] * (len(labels) - length)
    assert (batch["labels"] != -100).sum() < batch["attention_mask"].sum()  # prompts really are excluded


def test_eos_ends_every_completion(full_run):
    _, trainer, _ = full_run
    eos, pad = trainer.processing_class.eos_token_id, trainer.processing_class.pad_token_id
    assert eos != pad
    for dataset in (trainer.train_dataset, trainer.eval_dataset):
        for row in dataset:
            assert row["input_ids"][-1] == eos and row["labels"][-1] == eos
            assert row["input_ids"].count(eos) == 1  # the end, and only there
            assert len(row["input_ids"]) <= trainer.args.max_length  # nothing was cut off after the EOS
    assert len(trainer.eval_dataset) == N_EVAL


# ---------------------------------------------------------------------------------------------------------------
# Training and saving
# ---------------------------------------------------------------------------------------------------------------
def test_short_run_lowers_held_out_loss_and_changes_the_weights(full_run, demo_dir):
    metrics, trainer, out = full_run
    saved = json.loads((out / "stage_metrics.json").read_text())
    assert saved["stage"] == "sft"
    assert saved["eval_loss_before"] == pytest.approx(metrics["eval_loss_before"])
    assert saved["eval_loss_after"] < saved["eval_loss_before"] - 0.03
    assert trainer.state.global_step == 12

    base = load_file(demo_dir / "base/model.safetensors")
    tuned = load_file(out / "model.safetensors")
    assert set(base) <= set(tuned)
    assert all(tuned[k].shape == base[k].shape for k in base)
    changed = [k for k in base if not torch.equal(tuned[k], base[k])]
    assert len(changed) >= 0.9 * len(base)

    reports = json.loads((out / "data_report.json").read_text())
    assert [(r["split"], r["kept"]) for r in reports] == [("train", N_TRAIN), ("test", N_EVAL)]
    assert (out / "README.md").is_file()


def test_saved_model_reloads_with_identical_logits(full_run, probe):
    _, trainer, out = full_run
    expected = forward(trainer.model, probe)
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert torch.allclose(forward(reloaded, probe), expected, atol=1e-6)
    tokenizer = load_tokenizer(str(out))
    assert tokenizer.get_vocab() == trainer.processing_class.get_vocab()
    assert tokenizer.pad_token_id == trainer.processing_class.pad_token_id
    ours = load_model(ModelConfig(model_name_or_path=str(out), dtype="float32"), tokenizer)
    assert torch.allclose(forward(ours, probe), expected, atol=1e-6)


def test_lora_trains_the_adapter_and_leaves_the_base_fixed(lora_run, demo_dir, probe):
    metrics, trainer, out = lora_run
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    assert json.loads((out / "adapter_config.json").read_text())["target_modules"] == ["c_attn"]
    model = trainer.model
    assert isinstance(model, PeftModel)

    base_file = load_file(demo_dir / "base/model.safetensors")
    base_now = {k.replace(".base_layer", ""): v for k, v in model.get_base_model().state_dict().items()
                if "lora_" not in k}
    assert set(base_file) <= set(base_now)
    assert all(torch.equal(base_now[k], base_file[k]) for k in base_file)

    adapter = load_file(out / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert len(lora_b) == 2 and all(v.abs().max() > 0 for v in lora_b)  # LoRA's B starts at zero
    base_model = AutoModelForCausalLM.from_pretrained(demo_dir / "base", dtype=torch.float32)
    assert not torch.allclose(forward(model, probe), forward(base_model, probe), atol=1e-4)
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"]


def test_merged_adapter_gives_the_adapter_models_logits(lora_run, demo_dir, probe):
    _, trainer, out = lora_run
    expected = forward(trainer.model, probe)
    assert (out / "merged/model.safetensors").is_file()
    merged = AutoModelForCausalLM.from_pretrained(out / "merged", dtype=torch.float32)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert torch.allclose(forward(merged, probe), expected, atol=1e-5)

    base_model = AutoModelForCausalLM.from_pretrained(demo_dir / "base", dtype=torch.float32)
    from_folder = PeftModel.from_pretrained(base_model, out)
    assert torch.allclose(forward(from_folder, probe), expected, atol=1e-5)
    loaded = load_model(ModelConfig(model_name_or_path=str(out), dtype="float32"), load_tokenizer(str(out)))
    assert torch.allclose(forward(loaded, probe), expected, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Hub
# ---------------------------------------------------------------------------------------------------------------
def test_push_to_hub_without_a_token_fails_before_training(demo_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants

    for variable in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    out = tmp_path / "pushed"
    args = sft_args(demo_dir, out, "--max_steps", "1", "--push_to_hub", "--hub_model_id", "someone/demo-sft")

    with pytest.raises(ValueError, match="token") as err:
        run_sft(args)
    assert "HF_TOKEN" in str(err.value)
    assert not out.exists()  # nothing trained, nothing saved

    # The same arguments pass the check once a token exists (so the failure above is the token's).
    from hub_fakes import install_fake_hub

    install_fake_hub(monkeypatch)  # the check also looks the repository up (a public one is refused)
    monkeypatch.setenv("HF_TOKEN", "hf_dummy_token_for_the_check")
    check_hub_token(parse_recipe_args(load_recipe("sft").DATACLASSES, args)[1])
