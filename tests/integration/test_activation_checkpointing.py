"""PPO with activation checkpointing under transformers' current name, and the old name still honoured."""

from __future__ import annotations

import pytest
from stage_runs import ppo_run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _checkpointed(run) -> dict[str, bool]:
    model = run.trainer.accelerator.unwrap_model(run.trainer.model)
    return {name: module.is_activation_checkpointing for name, module in
            (("policy", model.policy), ("value", model.value_model))}


def test_ppo_trains_with_activation_checkpointing_and_no_deprecation(demo_dir, sft_dir, tmp_path_factory):
    # pyproject turns FutureWarning/DeprecationWarning into errors: this run would fail on a deprecated call.
    run = ppo_run(demo_dir, sft_dir, tmp_path_factory.mktemp("ckpt"), "--activation_checkpointing", "true")
    assert _checkpointed(run) == {"policy": True, "value": True}  # on again after every rollout's generate
    assert run.trainer.state.global_step == 1


def test_the_old_gradient_checkpointing_name_still_works_with_transformers_warning(demo_dir, sft_dir,
                                                                                  tmp_path_factory):
    with pytest.warns(FutureWarning, match="`gradient_checkpointing` is deprecated"):
        run = ppo_run(demo_dir, sft_dir, tmp_path_factory.mktemp("ckpt_old"), "--gradient_checkpointing", "true")
    assert _checkpointed(run) == {"policy": True, "value": True}
