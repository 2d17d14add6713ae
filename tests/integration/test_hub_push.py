"""Publishing: what each stage uploads, to which repository, with which visibility, and what never leaves the machine.

The Hub is faked at `huggingface_hub`'s network boundary (`hub_fakes.py`): our allow-list and the Trainer choose the
files, repository info and creation go over HTTP to a local stand-in, and the fake records each commit's exact file
list and bytes.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run_recipe
from hub_fakes import install_fake_hub, remove_every_token
from stage_runs import ppo_run, sft_args

from rlhf_recipes import hub, models
from rlhf_recipes.config import ConfigError, parse_recipe_args
from rlhf_recipes.feedback import publish
from rlhf_recipes.models import REWARD_NORMALIZATION_FILE, load_model, load_tokenizer, write_reward_bias
from rlhf_recipes.outputs import write_stage_metrics

TOKEN = "hf_fake_write_token_for_tests"
# Never uploaded, whatever the stage: optimizer/scheduler/RNG state, pickles, checkpoints, local logs.
# (The top-level trainer_state.json is the run's log history, published like the Trainer does.)
FORBIDDEN = ["checkpoint-*", "*/checkpoint-*", "tmp-checkpoint-*", "*optimizer.pt", "*scheduler.pt", "*rng_state*",
             "*.pth", "*/trainer_state.json", "runs/*", "*.bin"]
SFT_FILES = {"README.md", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
             "tokenizer_config.json", "stage_metrics.json", "data_report.json", "trainer_state.json"}


@pytest.fixture
def fake_hub(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return install_fake_hub(monkeypatch)


def forbidden_uploads(paths) -> list[str]:
    return sorted(p for p in paths if any(fnmatch.fnmatch(p, pattern) for pattern in FORBIDDEN))


def card_metadata(readme: bytes) -> dict:
    text = readme.decode()
    assert text.startswith("---\n"), text[:200]
    return yaml.safe_load(text.split("---\n")[1])


def add_training_leftovers(run: Path) -> None:
    """What a real output_dir also holds: checkpoints (complete and half-written), optimizer/RNG state, logs."""
    for folder in (run / "checkpoint-5", run / "tmp-checkpoint-6" / "checkpoint-6"):
        folder.mkdir(parents=True)
        for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"):
            (folder / name).write_bytes(b"state")
    (run / "optimizer.pt").write_bytes(b"state")
    (run / "rng_state.pth").write_bytes(b"state")
    (run / "runs" / "Nov26_12-00-00").mkdir(parents=True)
    (run / "runs" / "Nov26_12-00-00" / "events.out.tfevents.1.host").write_bytes(b"log")


def test_push_run_sft_uploads_the_model_tokenizer_and_card_only(fake_hub, sft_dir, tmp_path):
    run = tmp_path / "sft"
    shutil.copytree(sft_dir, run)
    add_training_leftovers(run)

    assert hub.push_run(run, "me/demo-sft") == ["me/demo-sft"]

    assert fake_hub.repos["me/demo-sft"]["private"] is True  # private unless asked otherwise
    assert fake_hub.repos["me/demo-sft"]["authorization"] == f"Bearer {TOKEN}"
    commit = fake_hub.last_commit("me/demo-sft")
    assert commit.authorization == f"Bearer {TOKEN}"
    assert set(commit.files) == SFT_FILES
    assert commit.files["model.safetensors"] == (sft_dir / "model.safetensors").read_bytes()
    metadata = card_metadata(commit.files["README.md"])
    assert "rlhf-recipes" in metadata["tags"] and metadata["pipeline_tag"] == "text-generation"
    assert [c.repo_id for c in fake_hub.commits] == ["me/demo-sft"]


def test_push_run_reward_model_carries_its_normalisation(fake_hub, sft_dir, tmp_path):
    run = tmp_path / "reward"
    tokenizer = load_tokenizer(str(sft_dir))
    model = load_model(_model_args(sft_dir), tokenizer, kind="reward")
    model.save_pretrained(run)
    tokenizer.save_pretrained(run)
    write_reward_bias(run, -0.375, raw_mean=0.375)
    write_stage_metrics(run, {"stage": "reward"})
    _card(run, "reward", sft_dir)
    add_training_leftovers(run)

    hub.push_run(run, "me/demo-rm", private=False)

    assert fake_hub.repos["me/demo-rm"]["private"] is False
    files = fake_hub.last_commit("me/demo-rm").files
    assert set(files) == {"README.md", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                          "stage_metrics.json", REWARD_NORMALIZATION_FILE}
    assert files[REWARD_NORMALIZATION_FILE] == (run / REWARD_NORMALIZATION_FILE).read_bytes()
    assert card_metadata(files["README.md"])["pipeline_tag"] == "text-classification"


@pytest.fixture(scope="module")
def ppo_dir(demo_dir, sft_dir, tmp_path_factory) -> Path:
    out = ppo_run(demo_dir, sft_dir, tmp_path_factory.mktemp("ppo_runs")).output_dir
    assert (out / "checkpoint-1" / "optimizer.pt").is_file()  # a real checkpoint sits beside the model
    return out


PPO_POLICY_FILES = {"README.md", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                    "tokenizer_config.json", "stage_metrics.json", "data_report.json", "ppo_state.json",
                    "trainer_state.json"}
VALUE_FILES = {"config.json", "model.safetensors"}


def test_push_run_ppo_with_value_model_subfolder(fake_hub, ppo_dir):
    hub.push_run(ppo_dir, "me/demo-ppo")

    files = fake_hub.last_commit("me/demo-ppo").files
    assert set(files) == PPO_POLICY_FILES | {f"value_model/{name}" for name in VALUE_FILES}
    assert files["value_model/model.safetensors"] == (ppo_dir / "value_model" / "model.safetensors").read_bytes()
    assert forbidden_uploads(files) == []


def test_push_cli_ppo_value_model_to_its_own_repository(fake_hub, ppo_dir, capsys):
    hub.main(["ppo", str(ppo_dir), "--repo_id", "me/demo-ppo", "--value_repo_id", "me/demo-ppo-value"])

    assert set(fake_hub.repos) == {"me/demo-ppo", "me/demo-ppo-value"}
    assert set(fake_hub.last_commit("me/demo-ppo").files) == PPO_POLICY_FILES  # no value_model/ in the policy repo
    value = fake_hub.last_commit("me/demo-ppo-value").files
    assert set(value) == VALUE_FILES
    assert value["model.safetensors"] == (ppo_dir / "value_model" / "model.safetensors").read_bytes()
    printed = capsys.readouterr().out
    assert "https://huggingface.co/me/demo-ppo," in printed and "https://huggingface.co/me/demo-ppo-value" in printed


CHECKPOINT_PUSH_FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                         "tokenizer_config.json", "trainer_state.json"}


def test_training_run_pushes_itself_with_our_card(fake_hub, demo_dir, tmp_path):
    """`--push_to_hub true`: the checkpoints' pushes during training (every save) and the final folder's, all through
    the allow-list, into a private repository (no YAML field asks for it: the default)."""
    out = tmp_path / "sft_push"
    out.mkdir()
    add_private_leftovers(out)  # already in output_dir when training starts
    metrics = run_recipe("sft", sft_args(demo_dir, out, "--max_steps", "2", "--save_strategy", "steps",
                                         "--save_steps", "1", "--push_to_hub", "true", "--hub_model_id", "sft-run"))

    assert set(fake_hub.repos) == {"me/sft-run"} and fake_hub.errors == []
    assert fake_hub.repos["me/sft-run"]["private"] is True
    assert (out / "checkpoint-2" / "optimizer.pt").is_file()
    # The checkpoint pushes during training, then the final one (no early "Model save" push of a half-written folder).
    assert [c.message for c in fake_hub.commits] == ["Training in progress, step 1", "Training in progress, step 2",
                                                     "sft: final model"]
    for commit in fake_hub.commits:
        assert commit.repo_id == "me/sft-run" and commit.authorization == f"Bearer {TOKEN}"
    for commit in fake_hub.commits[:2]:  # the checkpoint's weights, config, tokenizer and log; no state, no pickle
        assert set(commit.files) == CHECKPOINT_PUSH_FILES, commit.message
    assert fake_hub.commits[1].files["model.safetensors"] == (out / "checkpoint-2" / "model.safetensors").read_bytes()
    assert not list(out.glob("_hub_push-*"))  # the upload's hard links are gone
    final = fake_hub.commits[-1]
    assert final.message == "sft: final model"
    assert set(final.files) == SFT_FILES
    # The card that goes up is ours (metadata, hyperparameters, metrics), not the trainer's generic one.
    assert final.files["README.md"] == (out / "README.md").read_bytes()
    assert "rlhf-recipes" in card_metadata(final.files["README.md"])["tags"]
    assert f'"train_loss": {metrics["train_loss"]}' in final.files["README.md"].decode()
    assert final.files["model.safetensors"] == (out / "model.safetensors").read_bytes()


def test_ppo_training_run_pushes_policy_and_value_model(fake_hub, demo_dir, sft_dir, tmp_path):
    out = ppo_run(demo_dir, sft_dir, tmp_path, "--push_to_hub", "true", "--hub_model_id", "me/ppo-run").output_dir

    assert set(fake_hub.repos) == {"me/ppo-run"} and fake_hub.errors == []
    assert fake_hub.repos["me/ppo-run"]["private"] is True
    assert [c.message for c in fake_hub.commits] == ["Training in progress, step 1", "ppo: final model"]
    for commit in fake_hub.commits:
        assert forbidden_uploads(commit.files) == [], commit.message
    final = fake_hub.commits[-1].files
    assert set(final) == PPO_POLICY_FILES | {f"value_model/{name}" for name in VALUE_FILES}
    assert final["value_model/model.safetensors"] == (out / "value_model" / "model.safetensors").read_bytes()
    assert final["README.md"] == (out / "README.md").read_bytes()
    assert card_metadata(final["README.md"])["tags"][:2] == ["rlhf-recipes", "ppo"]


@pytest.mark.parametrize("stage", ["sft", "ppo"])
def test_missing_token_fails_before_training(stage, demo_dir, reward_head_dir, tmp_path, monkeypatch):
    remove_every_token(monkeypatch, tmp_path)
    fake_hub = install_fake_hub(monkeypatch)
    out = tmp_path / "out"
    args = sft_args(demo_dir, out) if stage == "sft" else [
        "--config", str(REPO / "recipes/demo/ppo.yaml"), "--sft_model_path", str(demo_dir / "base"),
        "--reward_model_path", str(reward_head_dir), "--dataset_name", str(demo_dir / "data/prompts"),
        "--ptx_dataset", str(demo_dir / "data/ptx/train.jsonl"), "--output_dir", str(out)]
    loaded = []
    for name in ("load_model", "load_tokenizer"):  # the recipes bind these when run_recipe imports them
        monkeypatch.setattr(models, name, lambda *args, _name=name, **kwargs: loaded.append(_name))

    with pytest.raises(ValueError, match=r"push_to_hub is set.*No Hugging Face token.*HF_TOKEN.*hf auth login"):
        run_recipe(stage, [*args, "--push_to_hub", "true", "--hub_model_id", "me/never"])

    assert loaded == []  # not even a tokenizer was loaded
    assert not out.exists() or list(out.iterdir()) == []  # no checkpoint, no weights, no card
    assert fake_hub.repos == {} and fake_hub.commits == []


def test_push_run_without_token_fails_before_creating_anything(sft_dir, tmp_path, monkeypatch):
    remove_every_token(monkeypatch, tmp_path)
    fake_hub = install_fake_hub(monkeypatch)
    with pytest.raises(hub.HubError, match="No Hugging Face token"):
        hub.push_run(sft_dir, "me/never")
    assert fake_hub.repos == {} and fake_hub.commits == []


def test_push_run_refuses_a_folder_without_a_model(fake_hub, tmp_path):
    (tmp_path / "stage_metrics.json").write_text("{}")
    with pytest.raises(hub.HubError, match="no saved model"):
        hub.push_run(tmp_path, "me/empty")
    with pytest.raises(hub.HubError, match="does not exist"):
        hub.push_run(tmp_path / "missing", "me/empty")
    assert fake_hub.repos == {}


def _model_args(path: Path):
    from trl import ModelConfig

    return ModelConfig(model_name_or_path=str(path), dtype="float32")


def _card(run: Path, stage: str, base: Path) -> None:
    from types import SimpleNamespace

    from rlhf_recipes.model_card import write_model_card

    write_model_card(run, stage=stage, script_args=SimpleNamespace(dataset_name=None), model_args=_model_args(base),
                     training_args=SimpleNamespace(learning_rate=1e-3), metrics={}, command="recipes/reward.py")


def _stage_folder(tmp_path: Path, name: str, weights_from: Path, stage: str, parent: str, dataset: str) -> Path:
    """A stage folder as a recipe leaves it: weights, tokenizer and the card naming what it was trained from."""
    from types import SimpleNamespace

    from rlhf_recipes.model_card import write_model_card

    run = tmp_path / name
    shutil.copytree(weights_from, run, ignore=shutil.ignore_patterns("README.md", "card_sources.json"))
    write_model_card(run, stage=stage, script_args=SimpleNamespace(dataset_name=dataset),
                     model_args=_model_args(Path(parent)), training_args=SimpleNamespace(learning_rate=1e-3),
                     metrics={}, command=f"recipes/{stage}.py")
    return run


def test_the_stand_in_refuses_a_card_whose_base_model_is_a_local_folder(fake_hub, sft_dir, tmp_path):
    """What the Hub did to every demo stage's card before base_model became a Hub id."""
    run = tmp_path / "sft"
    shutil.copytree(sft_dir, run)
    card = (run / "README.md").read_text().replace("library_name:", f"base_model: {sft_dir}\nlibrary_name:", 1)
    (run / "README.md").write_text(card)
    (run / "card_sources.json").unlink()  # a card from before: nothing to resolve it again from

    with pytest.raises(ValueError, match=r"(?s)Invalid metadata in README.md.*\"base_model\" with value .* is not valid"):
        hub.push_run(run, "me/old-card")
    assert fake_hub.commits == [] and len(fake_hub.refused_cards) == 1


def test_make_push_of_the_three_stages_in_order_links_each_card_to_its_parent(fake_hub, demo_dir, sft_dir,
                                                                               tmp_path, capsys):
    sft = _stage_folder(tmp_path, "sft", sft_dir, "sft", str(demo_dir / "base"), str(demo_dir / "data/sft"))
    reward = _stage_folder(tmp_path, "reward", sft_dir, "reward", str(sft), str(demo_dir / "data/reward"))
    ppo = _stage_folder(tmp_path, "ppo", sft_dir, "ppo", str(sft), "me/prompts")
    # Trained before anything was pushed: no card can name a Hub repository yet, and none names a local folder.
    for run in (sft, reward, ppo):
        assert "base_model" not in card_metadata((run / "README.md").read_bytes())

    for stage, run, repo in (("sft", sft, "me/demo-sft"), ("reward", reward, "me/demo-rm"), ("ppo", ppo, "me/demo-ppo")):
        hub.main([stage, str(run), "--repo_id", repo])  # what `make push STAGE=... RUN=... ARGS=--repo_id ...` runs

    assert fake_hub.refused_cards == [] and fake_hub.errors == []
    assert all(fake_hub.repos[r]["private"] is True for r in ("me/demo-sft", "me/demo-rm", "me/demo-ppo"))
    cards = {repo: card_metadata(fake_hub.last_commit(repo).files["README.md"])
             for repo in ("me/demo-sft", "me/demo-rm", "me/demo-ppo")}
    assert "base_model" not in cards["me/demo-sft"]  # its parent, the demo's base model, is on no Hub
    assert cards["me/demo-rm"]["base_model"] == "me/demo-sft"  # the reward model and PPO start from the SFT model
    assert cards["me/demo-ppo"]["base_model"] == "me/demo-sft"
    assert "datasets" not in cards["me/demo-rm"] and cards["me/demo-ppo"]["datasets"] == ["me/prompts"]
    assert (sft / "hub_repo.json").is_file()
    for repo in cards:  # local bookkeeping and local paths stay local
        assert not {"hub_repo.json", "card_sources.json"} & fake_hub.files(repo)
        assert str(tmp_path) not in yaml.safe_dump(cards[repo])
    printed = capsys.readouterr()
    assert TOKEN not in printed.out + printed.err


# ---- Visibility: private unless asked, and no push into a public repository by accident ----

RECIPES_WITH_PUSH = ("sft", "reward", "ppo", "grpo", "rloo", "dpo", "online_dpo")


def _help(dataclasses) -> str:
    """What `--help` prints (the parser the recipes use), on one long line per option."""
    from rlhf_recipes.config import RecipeParser

    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "400"  # argparse wraps help at this width
    try:
        return RecipeParser(dataclasses).format_help()
    finally:
        os.environ.pop("COLUMNS") if before is None else os.environ.update(COLUMNS=before)


def test_label_help_says_what_the_push_flags_do():
    from conftest import load_recipe

    words = _help(load_recipe("label").DATACLASSES).split()
    for flag in ("--hub_private_repo", "--no_hub_private_repo,"):
        text = " ".join(words[words.index(flag, words.index("options:")):][:60])
        assert "Default true, private" in text and "`--no_hub_private_repo` (or" in text and "publishes publicly" in text
    keep = " ".join(words[words.index("--keep_labeler_names", words.index("options:")):][:30])
    assert "Publish labeler names as they are. Default: each name is replaced by a pseudonym" in keep


@pytest.mark.parametrize("stage", RECIPES_WITH_PUSH)
def test_every_stage_pushes_private_unless_asked_even_without_a_yaml(stage, tmp_path):
    from conftest import load_recipe

    dataclasses = load_recipe(stage).DATACLASSES
    base = ["--output_dir", str(tmp_path), "--bf16", "false", "--use_cpu", "true"]
    with warnings.catch_warnings():  # TRL's own defaults still set deprecated names: not what this test is about
        warnings.simplefilter("ignore", FutureWarning)
        _, training_args, _ = parse_recipe_args(dataclasses, base)
        assert training_args.hub_private_repo is True  # transformers' default, None, creates the repository public
        for public in (["--hub_private_repo", "false"], ["--no_hub_private_repo"]):
            assert parse_recipe_args(dataclasses, base + public)[1].hub_private_repo is False
    # Both flags' help says what they do (the `no_` one used to read "create the repository private").
    words = _help(dataclasses).split()
    for flag in ("--hub_private_repo", "--no_hub_private_repo,"):
        text = " ".join(words[words.index(flag, words.index("options:")):][:60])
        assert "Default true, private" in text and "`--no_hub_private_repo` (or" in text and "publishes publicly" in text


def test_the_demo_and_model_recipes_do_not_ask_for_public_pushes():
    for path in sorted((REPO / "recipes").glob("*/*.yaml")):
        config = yaml.safe_load(path.read_text()) or {}
        assert config.get("hub_private_repo", True) is True, path


def test_new_repository_is_private_and_public_only_when_asked(fake_hub, sft_dir, tmp_path):
    run = tmp_path / "sft"
    shutil.copytree(sft_dir, run)
    hub.main(["sft", str(run), "--repo_id", "demo-sft"])  # a bare name goes to the token owner's namespace
    hub.main(["sft", str(run), "--repo_id", "me/demo-sft-public", "--public"])
    assert fake_hub.repos["me/demo-sft"]["private"] is True
    assert fake_hub.repos["me/demo-sft-public"]["private"] is False
    assert json.loads((run / "hub_repo.json").read_text()) == {"repo_id": "me/demo-sft-public"}


def test_push_into_an_existing_public_repository_is_refused_unless_asked(fake_hub, sft_dir, tmp_path):
    fake_hub.repos["me/already-public"] = {"private": False, "authorization": None, "repo_type": "model"}
    fake_hub.repos["me/already-private"] = {"private": True, "authorization": None, "repo_type": "model"}
    run = tmp_path / "ppo"  # a copy: a push records its repository in the folder
    shutil.copytree(sft_dir, run)
    with pytest.raises(hub.HubError, match=r"me/already-public already exists and is public.*--public"):
        hub.push_run(run, "already-public")
    shutil.copytree(sft_dir, run / "value_model")
    with pytest.raises(hub.HubError, match=r"me/already-public .*public"):  # the value model's repository too
        hub.push_run(run, "me/new-policy", value_repo_id="me/already-public")
    assert fake_hub.commits == [] and set(fake_hub.repos) == {"me/already-public", "me/already-private"}
    assert not (run / "hub_repo.json").exists()

    hub.push_run(run, "me/already-private")  # private stays private: nothing to ask
    hub.push_run(run, "me/already-public", private=False)  # public on purpose
    assert [c.repo_id for c in fake_hub.commits] == ["me/already-private", "me/already-public"]


def test_a_stage_refuses_a_public_repository_before_training(fake_hub, demo_dir, tmp_path):
    from conftest import load_recipe

    fake_hub.repos["me/public-run"] = {"private": False, "authorization": None, "repo_type": "model"}
    sft = load_recipe("sft")
    args = sft_args(demo_dir, tmp_path / "out", "--push_to_hub", "true", "--hub_model_id", "public-run")
    _, training_args, _ = parse_recipe_args(sft.DATACLASSES, args)
    with pytest.raises(ConfigError, match=r"me/public-run already exists and is public.*hub_private_repo: false"):
        sft.main(*parse_recipe_args(sft.DATACLASSES, args))
    assert not (tmp_path / "out").exists() and fake_hub.commits == []
    # Asked for: accepted, and the Trainer and the final push both get the full repository id.
    from rlhf_recipes.outputs import check_hub_token

    _, training_args, _ = parse_recipe_args(sft.DATACLASSES, args + ["--hub_private_repo", "false"])
    check_hub_token(training_args)
    assert training_args.hub_model_id == "me/public-run" and training_args.hub_private_repo is False
    _, training_args, _ = parse_recipe_args(sft.DATACLASSES, args + ["--hub_strategy", "checkpoint"])
    with pytest.raises(ConfigError, match="hub_strategy 'checkpoint' would upload whole checkpoints"):
        check_hub_token(training_args)


def test_hub_answers_a_user_fixes_are_one_paragraph_errors(fake_hub, sft_dir, monkeypatch):
    from huggingface_hub import constants

    fake_hub.revoked_tokens.add(TOKEN)
    with pytest.raises(hub.HubError, match=r"refused the push to me/x \(401\).*write token"):
        hub.push_run(sft_dir, "me/x")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(hub.HubError, match="Cannot push to me/x: HF_HUB_OFFLINE is set"):
        hub.push_run(sft_dir, "me/x")
    assert fake_hub.repos == {} and fake_hub.commits == []


# ---- The allow-list: exactly these files, whatever else the folder holds ----

def add_private_leftovers(run: Path) -> None:
    """Files a user's output_dir may hold that must never be published."""
    (run / ".env").write_text("HF_TOKEN=hf_secret\nWANDB_API_KEY=secret\n")
    (run / "notes.pkl").write_bytes(b"\x80\x04pickle")
    (run / "training_args.bin").write_bytes(b"\x80\x04pickle")
    (run / "wandb" / "run-1" / "files").mkdir(parents=True)
    (run / "wandb" / "run-1" / "files" / "config.yaml").write_text("api_key: secret\n")
    (run / "cache-0123abcd.arrow").write_bytes(b"arrow")
    (run / "data" / "train").mkdir(parents=True)
    (run / "data" / "train" / "data-00000-of-00001.arrow").write_bytes(b"arrow")
    (run / "data" / "train" / "model.safetensors").write_bytes(b"not this one")  # an allowed name, too deep
    (run / "secrets.json").write_text("{}")
    (run / "labeler_salt").write_text("0" * 64)
    (run / "value_model" / "optimizer.pt").parent.mkdir()
    (run / "value_model" / "optimizer.pt").write_bytes(b"state")


def test_push_uploads_exactly_the_allow_list(fake_hub, sft_dir, tmp_path):
    run = tmp_path / "sft"
    shutil.copytree(sft_dir, run)
    add_training_leftovers(run)
    add_private_leftovers(run)
    (run / "loss.png").write_bytes(b"png")
    (run / "eval_results.json").write_text("{}")

    hub.push_run(run, "me/allow-list")

    files = fake_hub.last_commit("me/allow-list").files
    assert set(files) == SFT_FILES | {"loss.png", "eval_results.json"}
    assert all(files[name] == (run / name).read_bytes() for name in files if name != "README.md")
    assert hub.publishable_files(run) == sorted(files)


# ---- Labels: pseudonymous unless asked ----

def write_rankings(path: Path) -> list[dict]:
    rows = [{"prompt": f"p{i}", "responses": ["a", "b", "c"], "labeler": name, "item_id": f"item{i}",
             "flags": [[], [], []], "shown_order": [2, 0, 1], "time": "2026-01-01T00:00:00Z"}
            for i, name in enumerate(["ann smith", "bob", "ann smith"])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_push_labels_private_with_pseudonymous_labelers_and_a_local_salt(fake_hub, tmp_path):
    comparisons = tmp_path / "feedback" / "comparisons.jsonl"
    comparisons.parent.mkdir()
    rows = write_rankings(comparisons)

    run_recipe("label", ["--comparisons_file", str(comparisons), "--push_to_hub", "true", "--hub_dataset_id", "labels"])

    assert fake_hub.repos["me/labels"] == {"private": True, "authorization": f"Bearer {TOKEN}",
                                           "repo_type": "dataset"}
    commit = fake_hub.last_commit("me/labels")
    assert set(commit.files) == {"train.jsonl", "README.md"}
    salt_file = comparisons.parent / "labeler_salt"
    assert salt_file.stat().st_mode & 0o777 == 0o600
    salt = salt_file.read_text().strip().encode()
    assert salt not in b"".join(commit.files.values())
    published = [json.loads(line) for line in commit.files["train.jsonl"].decode().splitlines()]
    expected = ["labeler-" + hmac.new(salt, r["labeler"].encode(), hashlib.sha256).hexdigest()[:12] for r in rows]
    assert [r["labeler"] for r in published] == expected and expected[0] == expected[2] != expected[1]
    assert [{**r, "labeler": None} for r in published] == [{**r, "labeler": None} for r in rows]
    assert b"ann" not in commit.files["train.jsonl"] + commit.files["README.md"]
    assert b"3 rankings" in commit.files["README.md"] and b"by 2 labelers" in commit.files["README.md"]

    # The salt is made once: the next push (a later round) gives every labeler the same pseudonym.
    publish.push_labels(comparisons, "me/labels")
    assert fake_hub.commits[-1].files["train.jsonl"] == commit.files["train.jsonl"]
    publish.push_labels(comparisons, "me/labels-named", keep_labeler_names=True)
    assert fake_hub.last_commit("me/labels-named").files["train.jsonl"] == comparisons.read_bytes()


def test_push_labels_refuses_a_public_dataset_unless_asked(fake_hub, tmp_path):
    comparisons = tmp_path / "comparisons.jsonl"
    write_rankings(comparisons)
    fake_hub.repos["me/open-labels"] = {"private": False, "authorization": None, "repo_type": "dataset"}
    with pytest.raises(hub.HubError, match=r"dataset repository me/open-labels .*public.*--hub_private_repo false"):
        publish.push_labels(comparisons, "me/open-labels")
    assert fake_hub.commits == []
    publish.push_labels(comparisons, "me/open-labels", private=False)
    assert fake_hub.last_commit("me/open-labels").files.keys() == {"train.jsonl", "README.md"}


# ---- The commands: one paragraph and exit code 2, never a traceback ----

def _cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "RLHF_DEBUG")}
    home = tmp_path / "hf_home"
    home.mkdir(exist_ok=True)
    return {**env, "HF_HOME": str(home), "HF_HUB_OFFLINE": "0", **extra}


def _assert_one_paragraph(done: subprocess.CompletedProcess, *needles: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    error = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1, done.stderr
    for needle in needles:
        assert needle in error[0], done.stderr


def _cli_inputs(tmp_path):
    """A run folder and a comparisons file to push, and an environment without any token."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    comparisons = tmp_path / "comparisons.jsonl"
    write_rankings(comparisons)
    return run, comparisons, _cli_env(tmp_path)


def test_push_commands_without_a_token_exit_2_with_one_paragraph(tmp_path):
    run, comparisons, env = _cli_inputs(tmp_path)
    push = subprocess.run([sys.executable, "-m", "rlhf_recipes.hub", "sft", str(run), "--repo_id", "me/x"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    _assert_one_paragraph(push, "No Hugging Face token", "HF_TOKEN")
    labels = subprocess.run([sys.executable, "recipes/label.py", "--comparisons_file", str(comparisons),
                             "--push_to_hub", "true", "--hub_dataset_id", "me/x"],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    _assert_one_paragraph(labels, "No Hugging Face token")
    missing = subprocess.run([sys.executable, "-m", "rlhf_recipes.hub", "sft", str(tmp_path / "nope"), "--repo_id",
                              "me/x"], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    _assert_one_paragraph(missing, "does not exist")
    debug = subprocess.run([sys.executable, "-m", "rlhf_recipes.hub", "sft", str(run), "--repo_id", "me/x",
                            "--debug"], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert debug.returncode != 0 and "Traceback" in debug.stderr  # --debug shows where


def test_make_push_and_push_labels_print_one_paragraph(tmp_path):
    run, comparisons, env = _cli_inputs(tmp_path)
    # -o: use the installed environment as it is (never reinstall from a test)
    make = ["make", "--no-print-directory", "-o", ".venv/bin/rlhf-installed"]
    for target in (["push", "STAGE=sft", f"RUN={run}", "ARGS=--repo_id me/x"],
                   ["push-labels", f"COMPARISONS={comparisons}", "ARGS=--hub_dataset_id me/x"]):
        done = subprocess.run(make + target, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert "error: No Hugging Face token found" in done.stderr and "(exit code 2;" in done.stderr


def test_push_cli_refuses_an_existing_public_repository_over_http(fake_hub, sft_dir, tmp_path):
    """Through the command, against the stand-in over real HTTP: refused before anything is created or sent."""
    from hub_fakes import _endpoint

    fake_hub.repos["me/public-model"] = {"private": False, "authorization": None, "repo_type": "model"}
    env = _cli_env(tmp_path, HF_TOKEN=TOKEN, HF_ENDPOINT=_endpoint())
    run = tmp_path / "sft"
    shutil.copytree(sft_dir, run)
    done = subprocess.run([sys.executable, "-m", "rlhf_recipes.hub", "sft", str(run), "--repo_id", "public-model"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    _assert_one_paragraph(done, "me/public-model already exists and is public", "--public")
    assert set(fake_hub.repos) == {"me/public-model"} and fake_hub.commits == []
