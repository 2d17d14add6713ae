"""Issue 7: the Hub token is used, but never written, printed, logged, or uploaded."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import run_recipe
from hub_fakes import install_fake_hub
from stage_runs import sft_args

from rlhf_recipes.model_card import _safe_command, write_model_card

SECRET = "hf_FAKE_secret_token_123"
TRACES = [SECRET.encode(), b"FAKE_secret", SECRET.encode("utf-16-le")]


def traces_in(data: bytes) -> list[bytes]:
    return [trace for trace in TRACES if trace in data]


def test_sft_run_with_push_leaves_no_trace_of_the_token(demo_dir, tmp_path, monkeypatch, capfd, caplog):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    hub = install_fake_hub(monkeypatch)
    out = tmp_path / "sft"
    args = sft_args(demo_dir, out, "--max_steps", "3", "--save_strategy", "steps", "--save_steps", "2",
                    "--push_to_hub", "true", "--hub_model_id", "me/token-safety", "--report_to", "none")
    assert not any(SECRET in a or (a.startswith("--") and "token" in a) for a in args)  # no token flag
    monkeypatch.setattr(sys, "argv", ["recipes/sft.py", *args])  # what the model card records as the command

    with caplog.at_level(logging.DEBUG):
        run_recipe("sft", args)

    # The token did its job: every request carried it.
    assert hub.repos["me/token-safety"]["authorization"] == f"Bearer {SECRET}"
    assert hub.commits and {c.authorization for c in hub.commits} == {f"Bearer {SECRET}"} and hub.errors == []

    written = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # The scan covers what matters: logs and state, configs, the card, reports, pickled arguments, checkpoints.
    for name in ("README.md", "config.json", "stage_metrics.json", "data_report.json", "training_args.bin",
                 "checkpoint-2/trainer_state.json", "checkpoint-2/training_args.bin", "checkpoint-2/optimizer.pt"):
        assert name in written, sorted(written)
    assert {name: traces_in(data) for name, data in written.items() if traces_in(data)} == {}
    uploaded = {f"{c.message}: {name}": data for c in hub.commits for name, data in c.files.items()}
    assert {name: traces_in(data) for name, data in uploaded.items() if traces_in(data)} == {}
    captured = capfd.readouterr()
    assert "SFT metrics" in captured.out and captured.err  # the run did print and log
    for stream in (captured.out, captured.err, caplog.text):
        assert traces_in(stream.encode()) == []


def test_hub_token_argument_is_refused_before_anything_is_written(demo_dir, tmp_path, monkeypatch, capfd):
    """A token passed as an argument would be pickled into training_args.bin, which the Trainer uploads."""
    monkeypatch.setenv("HF_TOKEN", SECRET)
    install_fake_hub(monkeypatch)
    out = tmp_path / "sft"
    args = sft_args(demo_dir, out, "--max_steps", "1", "--push_to_hub", "true", "--hub_model_id", "me/x",
                    "--hub_token", SECRET)
    with pytest.raises(ValueError, match="HF_TOKEN") as err:
        run_recipe("sft", args)
    assert SECRET not in str(err.value)
    assert not out.exists()
    captured = capfd.readouterr()
    assert traces_in((captured.out + captured.err).encode()) == []


@pytest.mark.parametrize("command, expected", [
    ("recipes/sft.py --hub_token hf_abc --learning_rate 1e-5", "recipes/sft.py --hub_token <redacted> --learning_rate 1e-5"),
    ("recipes/sft.py --hub_token=hf_abc --seed 1", "recipes/sft.py --hub_token=<redacted> --seed 1"),
    ("recipes/sft.py --hub-token hf_abc", "recipes/sft.py --hub-token <redacted>"),
    ("x.py --token hf_abc --eos_token <|endoftext|>", "x.py --token <redacted> --eos_token <|endoftext|>"),
    (f"x.py --note {'hf_' + 'a1B2' * 9}", "x.py --note <redacted>"),
    ("recipes/sft.py --config recipes/demo/sft.yaml --max_steps 3", "recipes/sft.py --config recipes/demo/sft.yaml "
                                                                   "--max_steps 3"),
])
def test_safe_command_redacts_tokens(command, expected):
    assert _safe_command(command) == expected


def test_model_card_never_shows_a_token_from_the_command(tmp_path: Path):
    command = f"recipes/sft.py --hub_token {SECRET} --push_to_hub true --hub_token={SECRET}"
    card = write_model_card(tmp_path, stage="sft", script_args=SimpleNamespace(dataset_name="me/data"),
                            model_args=SimpleNamespace(model_name_or_path="gpt2", use_peft=False),
                            training_args=SimpleNamespace(learning_rate=1e-5, hub_token=SECRET), metrics={},
                            command=command)
    text = card.read_text()
    assert traces_in(text.encode()) == []
    assert "recipes/sft.py --hub_token <redacted> --push_to_hub true --hub_token=<redacted>" in text
