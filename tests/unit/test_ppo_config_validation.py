"""Impossible PPO settings fail before any model loads, with one message each that says what to change."""

from __future__ import annotations

import pytest
import torch
from conftest import REPO, run_recipe
from gpt2_like import save_gpt2_like

from rlhf_recipes.config import ConfigError
from rlhf_recipes.models import check_same_tokenizer, load_tokenizer
from rlhf_recipes.ppo import PPOConfig

PPO_YAML = str(REPO / "recipes/demo/ppo.yaml")


def test_ptx_coef_without_a_ptx_dataset_is_refused(tmp_path):
    with pytest.raises(ValueError, match="`ptx_coef` = 0.5 needs `ptx_dataset`"):
        PPOConfig(output_dir=str(tmp_path), ptx_coef=0.5, ptx_dataset=None, report_to="none")


def test_unknown_kl_estimator_and_non_positive_target_are_refused(tmp_path):
    with pytest.raises(ValueError, match="`kl_estimator` = 'k2' must be one of 'k1', 'k3'"):
        PPOConfig(output_dir=str(tmp_path), kl_estimator="k2", report_to="none")
    with pytest.raises(ValueError, match=r"`target_kl` = 0.0 is out of range: it must be in \(0, ∞\)"):
        PPOConfig(output_dir=str(tmp_path), target_kl=0.0, report_to="none")


def test_a_reward_model_with_another_tokenizer_is_refused(demo_dir, tmp_path):
    other = save_gpt2_like(tmp_path / "other")
    tokenizer = load_tokenizer(str(demo_dir / "base"))
    check_same_tokenizer(tokenizer, str(demo_dir / "base"))  # the same tokenizer passes
    with pytest.raises(ValueError, match=f"The tokenizer of {other} differs from the policy's"):
        check_same_tokenizer(tokenizer, str(other))


def ppo_args(demo_dir, reward_dir, out, *extra):
    return ["--config", PPO_YAML, "--sft_model_path", str(demo_dir / "base"),
            "--reward_model_path", str(reward_dir), "--dataset_name", str(demo_dir / "data/prompts"),
            "--ptx_dataset", str(demo_dir / "data/ptx/train.jsonl"), "--output_dir", str(out), *extra]


def test_response_length_beyond_the_context_window_is_refused_before_loading(demo_dir, reward_head_dir, tmp_path,
                                                                           monkeypatch):
    import rlhf_recipes.models as models

    def must_not_load(*args, **kwargs):
        raise AssertionError("a model was loaded before the configuration was checked")

    monkeypatch.setattr(models, "load_model", must_not_load)
    with pytest.raises(ValueError, match="response_length 200 leaves no room for a prompt in the 128-token context"):
        run_recipe("ppo", ppo_args(demo_dir, reward_head_dir, tmp_path / "out", "--response_length", "200"))
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_a_misspelled_ppo_key_in_yaml_names_the_key_and_file(demo_dir, tmp_path):
    config = tmp_path / "ppo.yaml"
    config.write_text((REPO / "recipes/demo/ppo.yaml").read_text() + "\nkl_coeff: 0.2\n")
    with pytest.raises(ConfigError, match=rf"Unknown key 'kl_coeff' in config file {config}.*Did you mean 'kl_coef'"):
        run_recipe("ppo", ["--config", str(config)])


def test_auto_bf16_follows_the_cpus_amx_flag_and_bad_backends_are_refused(tmp_path, monkeypatch):
    from rlhf_recipes.ppo import config as ppo_config

    amx, plain = tmp_path / "amx", tmp_path / "plain"
    amx.write_text("flags\t\t: fpu avx512f amx_bf16 amx_tile amx_int8\n")
    plain.write_text("flags\t\t: fpu avx2 avx512_bf16\n")  # bf16 vector instructions, but no AMX tiles
    assert ppo_config.cpu_has_amx_bf16(amx) and not ppo_config.cpu_has_amx_bf16(plain)
    assert not ppo_config.cpu_has_amx_bf16(tmp_path / "missing")
    monkeypatch.setattr(ppo_config, "_accelerator_available", lambda: False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    for has_amx in (True, False):
        monkeypatch.setattr(ppo_config, "cpu_has_amx_bf16", lambda has_amx=has_amx: has_amx)
        args = PPOConfig(output_dir=str(tmp_path), auto_bf16=True, report_to="none")
        assert args.bf16 is has_amx and args.use_cpu is has_amx  # bf16 on a CPU needs use_cpu
    # AMX tiles, but torch's kernels forced to AVX2 (ATEN_CPU_CAPABILITY=avx2): its bf16 attention would fail
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert not PPOConfig(output_dir=str(tmp_path), auto_bf16=True, report_to="none").bf16
    with pytest.raises(ValueError, match="`generation_backend` = 'vllm' must be one of"):
        PPOConfig(output_dir=str(tmp_path), generation_backend="vllm", report_to="none")
