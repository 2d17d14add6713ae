"""Issue 7: a NaN/inf loss stops the run with a message naming the step and the quantity; the last complete
checkpoint stays loadable (and is what `--resume_from_checkpoint latest` picks), and no NaN model is saved."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import run_recipe
from recipe_runner import record_steps
from stage_runs import sft_args
from transformers.trainer_callback import CallbackHandler
from transformers.trainer_utils import get_last_checkpoint
from trl import ModelConfig
from trl import SFTTrainer as TrlSFTTrainer

from rlhf_recipes.checkpoints import NonFiniteError
from rlhf_recipes.models import load_model, load_tokenizer

BAD_STEP = 3  # checkpoint-2 is written before it


def poison_training_step(monkeypatch, step: int, value: float) -> list[bool]:
    """Multiply the training loss of the `step`-th training step (1-based) by `value` (nan or inf).

    The product keeps the graph, so the gradients turn non-finite too, as after a real overflow. Evaluation losses
    are left alone.
    """
    compute_loss = TrlSFTTrainer.compute_loss
    calls = []

    def poisoned(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = compute_loss(self, model, inputs, return_outputs=return_outputs,
                              num_items_in_batch=num_items_in_batch)
        if not model.training:
            return result
        calls.append(True)
        if len(calls) != step:
            return result
        if return_outputs:
            return result[0] * value, result[1]
        return result * value

    monkeypatch.setattr(TrlSFTTrainer, "compute_loss", poisoned)
    return calls


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_sft_stops_at_a_non_finite_loss_and_keeps_the_last_checkpoint(value, demo_dir, tmp_path, monkeypatch):
    out = tmp_path / "sft"
    calls = poison_training_step(monkeypatch, BAD_STEP, value)

    with pytest.raises(NonFiniteError) as err:
        run_recipe("sft", sft_args(demo_dir, out, "--max_steps", "6", "--save_strategy", "steps",
                                   "--save_steps", "2", "--max_eval_samples", "4"))

    message = str(err.value)
    assert f"step {BAD_STEP} " in message and "loss" in message, message
    assert str(value) in message  # the value itself: nan or inf
    assert len(calls) == BAD_STEP  # stopped at once, no further step
    # No final model, no checkpoint of the bad step, no half-written staging folder.
    # (TRL writes a draft README.md at every checkpoint save; the data report is written when the data loads.)
    assert sorted(p.name for p in out.iterdir() if p.name not in ("README.md", "data_report.json")) == ["checkpoint-2"]
    last = get_last_checkpoint(str(out))
    assert last is not None and last.endswith("checkpoint-2")

    tokenizer = load_tokenizer(last)
    model = load_model(ModelConfig(model_name_or_path=last, dtype="float32"), tokenizer)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    ids = torch.tensor([tokenizer("The film was", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    assert torch.isfinite(loss)


def test_resume_from_the_kept_checkpoint_finishes(demo_dir, tmp_path, monkeypatch):
    out = tmp_path / "sft"
    args = sft_args(demo_dir, out, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2",
                    "--max_eval_samples", "4")
    with monkeypatch.context() as patch:
        poison_training_step(patch, BAD_STEP, math.nan)
        with pytest.raises(NonFiniteError):
            run_recipe("sft", args)

    steps = []
    with monkeypatch.context() as patch:
        patch.setattr(CallbackHandler, "on_step_end", CallbackHandler.on_step_end)  # undone after the resume
        record_steps(steps)
        metrics = run_recipe("sft", [*args, "--resume_from_checkpoint", "latest"])

    assert steps == [3, 4]  # from checkpoint-2: steps 1-2 are not redone

    assert math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["eval_loss_after"])
    assert (out / "model.safetensors").is_file() and (out / "checkpoint-4").is_dir()
