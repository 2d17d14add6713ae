"""Publishing (issue 6): what each stage uploads, to which repository, and what never leaves the machine.

The Hub is faked at `huggingface_hub`'s network boundary (`hub_fakes.py`): the real `upload_folder` and
`Trainer.push_to_hub` choose the files, the fake records each commit's exact file list and bytes.
"""

from __future__ import annotations

import fnmatch
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run_recipe
from hub_fakes import install_fake_hub, remove_every_token
from stage_runs import ppo_run, sft_args

from rlhf_recipes import hub, models
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


def test_training_run_pushes_itself_with_our_card(fake_hub, demo_dir, tmp_path):
    """`--push_to_hub true`: the Trainer's own upload, during training (every save) and at the end."""
    out = tmp_path / "sft_push"
    metrics = run_recipe("sft", sft_args(demo_dir, out, "--max_steps", "2", "--save_strategy", "steps",
                                         "--save_steps", "2", "--push_to_hub", "true", "--hub_model_id", "me/sft-run"))

    assert set(fake_hub.repos) == {"me/sft-run"} and fake_hub.errors == []
    assert (out / "checkpoint-2" / "optimizer.pt").is_file()
    # The checkpoint push during training, then the final one (no early "Model save" push of a half-written folder).
    assert [c.message for c in fake_hub.commits] == ["Training in progress, step 2", "sft: final model"]
    for commit in fake_hub.commits:
        assert commit.repo_id == "me/sft-run" and commit.authorization == f"Bearer {TOKEN}"
        assert forbidden_uploads(set(commit.files) - {"training_args.bin"}) == [], commit.message
    final = fake_hub.commits[-1]
    assert final.message == "sft: final model"
    assert SFT_FILES <= set(final.files)
    assert "training_args.bin" not in final.files, "the final upload carries no pickle"
    # The card that goes up is ours (metadata, hyperparameters, metrics), not the trainer's generic one.
    assert final.files["README.md"] == (out / "README.md").read_bytes()
    assert "rlhf-recipes" in card_metadata(final.files["README.md"])["tags"]
    assert f'"train_loss": {metrics["train_loss"]}' in final.files["README.md"].decode()
    assert final.files["model.safetensors"] == (out / "model.safetensors").read_bytes()


def test_ppo_training_run_pushes_policy_and_value_model(fake_hub, demo_dir, sft_dir, tmp_path):
    out = ppo_run(demo_dir, sft_dir, tmp_path, "--push_to_hub", "true", "--hub_model_id", "me/ppo-run").output_dir

    assert set(fake_hub.repos) == {"me/ppo-run"} and fake_hub.errors == []
    assert [c.message for c in fake_hub.commits] == ["Training in progress, step 1", "ppo: final model"]
    for commit in fake_hub.commits:
        assert forbidden_uploads(set(commit.files) - {"training_args.bin"}) == [], commit.message
    final = fake_hub.commits[-1].files
    assert PPO_POLICY_FILES | {f"value_model/{name}" for name in VALUE_FILES} <= set(final)
    assert "training_args.bin" not in final
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
    with pytest.raises(ValueError, match="No Hugging Face token"):
        hub.push_run(sft_dir, "me/never")
    assert fake_hub.repos == {} and fake_hub.commits == []


def test_push_run_refuses_a_folder_without_a_model(fake_hub, tmp_path):
    (tmp_path / "stage_metrics.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no saved model"):
        hub.push_run(tmp_path, "me/empty")
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
