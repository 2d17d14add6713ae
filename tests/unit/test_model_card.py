"""The model card's Hub links: `base_model` and `datasets` are Hub ids, or absent."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import yaml

from rlhf_recipes.model_card import HUB_REPO_FILE, hub_model_id, is_hub_id, write_model_card


def _card(folder: Path, base: str, dataset: str | None, stage: str = "sft") -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    path = write_model_card(folder, stage=stage, script_args=SimpleNamespace(dataset_name=dataset),
                            model_args=SimpleNamespace(model_name_or_path=base, use_peft=False),
                            training_args=SimpleNamespace(learning_rate=1e-5), metrics={}, command="recipes/x.py")
    return yaml.safe_load(path.read_text().split("---\n")[1])


def test_hub_ids_and_local_paths():
    assert is_hub_id("openai-community/gpt2") and is_hub_id("gpt2") and is_hub_id("Anthropic/hh-rlhf")
    for local in ("runs/gpt2/sft", "/abs/dir", "./sft", "../sft", "a/b/c", "me/x..y", "data.jsonl/"):
        assert not is_hub_id(local), local


def test_gpt2_recipe_chain_links_back_to_the_hub_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sft = _card(tmp_path / "runs/gpt2/sft", "openai-community/gpt2", "Anthropic/hh-rlhf")
    assert sft["base_model"] == "openai-community/gpt2" and sft["datasets"] == ["Anthropic/hh-rlhf"]
    # The reward model starts from the local SFT folder: its nearest Hub ancestor is GPT-2 ...
    (tmp_path / "prefs.jsonl").write_text("{}\n")
    reward = _card(tmp_path / "runs/gpt2/reward", "runs/gpt2/sft", "prefs.jsonl", stage="reward")
    assert reward["base_model"] == "openai-community/gpt2" and "datasets" not in reward  # a local file: omitted
    # ... until the SFT folder is pushed; from then on it is the pushed repository.
    (tmp_path / "runs/gpt2/sft" / HUB_REPO_FILE).write_text(json.dumps({"repo_id": "me/gpt2-hh-sft"}))
    assert hub_model_id("runs/gpt2/sft") == "me/gpt2-hh-sft"
    ppo = _card(tmp_path / "runs/gpt2/ppo", "runs/gpt2/sft", "Anthropic/hh-rlhf", stage="ppo")
    assert ppo["base_model"] == "me/gpt2-hh-sft"


def test_no_hub_ancestor_means_no_base_model(tmp_path):
    (tmp_path / "base").mkdir()  # a model built locally (the demo's base): no card, never pushed
    card = _card(tmp_path / "sft", str(tmp_path / "base"), str(tmp_path / "data"))
    assert "base_model" not in card and "datasets" not in card
    # Folders whose cards name each other (copied by hand) end the search instead of looping.
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a/README.md").write_text(f"---\nbase_model: {tmp_path / 'b'}\n---\n")
    (tmp_path / "b/README.md").write_text(f"---\nbase_model: {tmp_path / 'a'}\n---\n")
    assert hub_model_id(str(tmp_path / "a")) is None
