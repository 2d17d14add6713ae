"""recipes/iterate.py end to end on a tiny demo: a run stopped and resumed makes the same rounds as one that was not.

The tiny demo is the tests' (tests/conftest.py): the short SFT run as both SFT and round-0 policy, an untrained
scalar head as the first RM, 16 of the demo's rankings; each round samples 16 fresh prompts x 2 answers and trains
an RM for a few steps and PPO for 8 episodes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run_recipe
from safetensors.torch import load_file
from stage_runs import reward_model_dir

from rlhf_recipes.config import ConfigError, UserError
from rlhf_recipes.demo.corpus import review_prompts
from rlhf_recipes.feedback import rounds as rounds_module
from rlhf_recipes.feedback.rounds import RoundsArguments, round_prompts
from rlhf_recipes.feedback.sampling import prompt_id

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS_PER_ROUND = 16  # with seed 0, round 2's draw meets 2 of round 1's prompts: a resume must not reuse them


def _tiny_yaml(recipe: str, path: Path, **overrides) -> str:
    config = yaml.safe_load((REPO / f"recipes/demo/{recipe}.yaml").read_text())
    path.write_text(yaml.safe_dump({**config, **overrides}))
    return str(path)


@pytest.fixture(scope="module")
def tiny_demo(demo_dir, sft_dir, tmp_path_factory) -> Path:
    """A `make demo` folder in miniature: sft, reward, ppo (here SFT itself) and the data the rounds read."""
    root = tmp_path_factory.mktemp("tiny-demo")
    for name, target in [("sft", sft_dir), ("ppo", sft_dir), ("reward", reward_model_dir(sft_dir, root))]:
        (root / name).symlink_to(target)
    (root / "data/reward").mkdir(parents=True)
    for name in ("heldout", "sft", "ptx"):
        (root / "data" / name).symlink_to(demo_dir / "data" / name)
    for split, n in [("train", 16), ("test", 8)]:
        lines = (demo_dir / f"data/reward/{split}.jsonl").read_text().splitlines()[:n]
        (root / f"data/reward/{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _args(demo: Path, out: Path, rounds: int, **extra) -> list[str]:
    configs = out.parent / f"{out.name}-configs"
    configs.mkdir(exist_ok=True)
    reward = _tiny_yaml("reward", configs / "reward.yaml", per_device_train_batch_size=8, per_device_eval_batch_size=8,
                        normalization_samples=16, max_eval_samples=8, logging_steps=1)
    ppo = _tiny_yaml("ppo", configs / "ppo.yaml", per_device_train_batch_size=4, num_mini_batches=2, num_ppo_epochs=1,
                     response_length=8, local_rollout_forward_batch_size=8, ptx_batch_size=2, max_eval_samples=4)
    argv = ["--demo_dir", str(demo), "--output_dir", str(out), "--rounds", str(rounds),
            "--prompts_per_round", str(PROMPTS_PER_ROUND), "--num_responses_per_prompt", "2", "--eval_prompts", "8",
            "--reward_config", reward, "--reward_epochs", "1", "--ppo_config", ppo, "--ppo_episodes", "8",
            "--ppo_target_kl", "1.0", "--judges", "vader"]
    for key, value in extra.items():
        argv += [f"--{key}", str(value)]
    return argv


def _items(path: Path) -> dict[str, list[str]]:
    return {row["item_id"] if "item_id" in row else row["id"]: row["responses"]
            for row in map(json.loads, path.read_text().splitlines())}


def _round_view(row: dict) -> dict:
    """What must not depend on where the run was stopped: everything but the paths and the wall time."""
    return {key: value for key, value in row.items() if not key.endswith("_path") and key != "seconds"}


class Stopped(Exception):
    pass


@pytest.mark.slow
def test_a_stopped_and_resumed_loop_makes_the_same_rounds_as_an_uninterrupted_one(tiny_demo, tmp_path, monkeypatch):
    fresh, resumed = tmp_path / "fresh", tmp_path / "resumed"
    run_recipe("iterate", _args(tiny_demo, fresh, rounds=2))

    # Stopped after round 1 (a finished rerun with --rounds 1), then killed inside round 2 after its sampling,
    # labeling and RM training, just as its PPO starts; then resumed.
    run_recipe("iterate", _args(tiny_demo, resumed, rounds=1))
    real_run = rounds_module._run

    def stop_at_round_2_ppo(recipe, argv):
        if recipe == "ppo" and "round2" in argv[argv.index("--output_dir") + 1]:
            raise Stopped
        return real_run(recipe, argv)

    monkeypatch.setattr(rounds_module, "_run", stop_at_round_2_ppo)
    with pytest.raises(Stopped):
        run_recipe("iterate", _args(tiny_demo, resumed, rounds=2))
    monkeypatch.setattr(rounds_module, "_run", real_run)
    assert len(json.loads((resumed / "rounds.json").read_text())) == 2  # rounds 0 and 1 finished
    run_recipe("iterate", _args(tiny_demo, resumed, rounds=2))

    a, b = (json.loads((out / "rounds.json").read_text()) for out in (fresh, resumed))
    assert [r["round"] for r in a] == [0, 1, 2]
    assert [_round_view(r) for r in b] == [_round_view(r) for r in a]
    ppo_prompts = {prompt_id(p) for p in review_prompts(1024, 0, "train")}
    seen: set[str] = set()
    for r in (1, 2):
        prompts = [(out / f"round{r}/prompts/train.jsonl").read_text() for out in (fresh, resumed)]
        assert prompts[0] == prompts[1]
        ids = {prompt_id(json.loads(line)["prompt"]) for line in prompts[0].splitlines()}
        assert len(ids) == PROMPTS_PER_ROUND and not ids & seen and not ids & ppo_prompts  # fresh every round
        seen |= ids
        # every prompt of the round was sampled and ranked by this round's policy: nothing skipped as "already there"
        assert a[r]["new_rankings"] == PROMPTS_PER_ROUND
    assert a[2]["comparisons"] - a[1]["comparisons"] == PROMPTS_PER_ROUND - int(PROMPTS_PER_ROUND * 0.25)
    # the same answers were ranked the same way, and the resumed run sampled round 2 once
    assert _items(fresh / "samples.jsonl") == _items(resumed / "samples.jsonl")
    assert _items(fresh / "comparisons.jsonl") == _items(resumed / "comparisons.jsonl")
    assert len((resumed / "samples.jsonl").read_text().splitlines()) == 2 * PROMPTS_PER_ROUND
    # the same weights (every stage is seeded and runs on one thread)
    for stage in ("round1/reward", "round2/reward", "round2/ppo"):
        before, after = (load_file(out / stage / "model.safetensors") for out in (fresh, resumed))
        assert before.keys() == after.keys()
        assert all((before[k] == after[k]).all() for k in before), stage
    # and the rounds did train: round 2's policy is not round 1's
    one, two = (load_file(fresh / f"round{r}/ppo/model.safetensors") for r in (1, 2))
    assert any(not (one[k] == two[k]).all() for k in one)


def test_round_prompts_exclude_every_earlier_round_read_from_disk(tmp_path):
    args = RoundsArguments(output_dir=str(tmp_path), prompts_per_round=48)
    ppo_prompts = {prompt_id(p) for p in review_prompts(1024, 0, "train")}
    earlier: set[str] = set()
    for r in (1, 2, 3):
        prompts = round_prompts(tmp_path, r, args)
        ids = {prompt_id(p) for p in prompts}
        assert len(ids) == 48 and not ids & earlier and not ids & ppo_prompts
        # the same call gives the same prompts: nothing is remembered between calls
        assert round_prompts(tmp_path, r, args) == prompts
        (tmp_path / f"round{r}/prompts").mkdir(parents=True)
        (tmp_path / f"round{r}/prompts/train.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n"
                                                                        for p in prompts))
        earlier |= ids
    # with seed 0, round 2's own draw overlaps round 1's: the files, not the draw, keep them apart
    unseen = RoundsArguments(output_dir=str(tmp_path / "elsewhere"), prompts_per_round=48)
    (tmp_path / "elsewhere/round1/prompts").mkdir(parents=True)
    (tmp_path / "elsewhere/round1/prompts/train.jsonl").write_text("")
    assert {prompt_id(p) for p in round_prompts(tmp_path / "elsewhere", 2, unseen)} & earlier
    (tmp_path / "round1/prompts/train.jsonl").unlink()
    with pytest.raises(UserError, match="round1/prompts/train.jsonl is missing"):
        round_prompts(tmp_path, 3, args)


def test_a_loop_is_not_continued_with_other_settings(tmp_path):
    from rlhf_recipes.feedback.rounds import _check_resume

    _check_resume(tmp_path, RoundsArguments(output_dir=str(tmp_path)))
    _check_resume(tmp_path, RoundsArguments(output_dir=str(tmp_path), rounds=5, judges=["vader"]))  # free to change
    with pytest.raises(ConfigError, match=r"method 'ppo' -> 'dpo'.*another --output_dir"):
        _check_resume(tmp_path, RoundsArguments(output_dir=str(tmp_path), method="dpo"))
    with pytest.raises(ConfigError, match="prompts_per_round 192 -> 64"):
        _check_resume(tmp_path, RoundsArguments(output_dir=str(tmp_path), prompts_per_round=64))
    # rounds written before settings.json existed: the rows' method counts
    (tmp_path / "settings.json").unlink()
    (tmp_path / "rounds.json").write_text('[{"round": 0, "comparisons": 3000}]')
    with pytest.raises(ConfigError, match="method 'ppo' -> 'dpo'"):
        _check_resume(tmp_path, RoundsArguments(output_dir=str(tmp_path), method="dpo"))


@pytest.mark.slow
def test_dpo_rounds_train_on_every_ranking_so_far_from_the_current_policy(tiny_demo, tmp_path, monkeypatch):
    out = tmp_path / "dpo"
    dpo = _tiny_yaml("dpo", tmp_path / "dpo.yaml", per_device_train_batch_size=8, per_device_eval_batch_size=8,
                     max_eval_samples=8, logging_steps=1)
    calls: list[tuple[str, list[str]]] = []
    real_run = rounds_module._run

    def recording(recipe, argv):
        calls.append((recipe, argv))
        return real_run(recipe, argv)

    monkeypatch.setattr(rounds_module, "_run", recording)
    run_recipe("iterate", _args(tiny_demo, out, rounds=2, method="dpo", dpo_config=dpo))
    rounds = json.loads((out / "rounds.json").read_text())
    flag = lambda argv, name: argv[argv.index(name) + 1]  # noqa: E731
    trained = [argv for recipe, argv in calls if recipe == "dpo"]
    assert [recipe for recipe, _ in calls] == ["dpo", "sample", "dpo", "sample", "dpo"]  # no RM, no PPO
    sft = str(tiny_demo / "sft")
    # round 0 is DPO from SFT; round r continues from round r-1's policy; the reference is SFT in every round
    assert [flag(argv, "--model_name_or_path") for argv in trained] == [sft] + [r["policy_path"] for r in rounds[:2]]
    assert [flag(argv, "--ref_model_path") for argv in trained] == [sft] * 3
    assert [r["method"] for r in rounds] == ["dpo"] * 3 and {r["reference_path"] for r in rounds} == {sft}
    # sampled from the current policy without an RM; ranked through the label store
    assert {json.dumps(row["rm_scores"]) for row in map(json.loads, (out / "samples.jsonl").open())} == {"null"}
    assert [r["new_rankings"] for r in rounds] == [0, PROMPTS_PER_ROUND, PROMPTS_PER_ROUND]
    # round 2 learns from every ranking so far but the held-out ones: the demo's 16 and both rounds' rest
    held = set(rounds[1]["held_out_ids"]) | set(rounds[2]["held_out_ids"])
    stored = [row for row in map(json.loads, (out / "comparisons.jsonl").open()) if row["item_id"] not in held]
    data = [json.loads(line) for line in (out / "round2/dpo_data/train.jsonl").open()]
    base = [json.loads(line) for line in (tiny_demo / "data/reward/train.jsonl").open()]
    assert [(d["prompt"], d["responses"]) for d in data] == [(r["prompt"], r["responses"]) for r in base + stored]
    assert rounds[2]["comparisons"] == 16 + 2 * (PROMPTS_PER_ROUND - int(PROMPTS_PER_ROUND * 0.25)) == len(data)
    assert all(0 <= r["rm_accuracy_on_policy_after"] <= 1 for r in rounds[1:])
    # each round moved the policy
    weights = [load_file(Path(r["policy_path"]) / "model.safetensors") for r in rounds]
    sft_weights = load_file(tiny_demo / "sft/model.safetensors")
    for before, after in zip([sft_weights, *weights], weights):
        assert any(not (before[k] == after[k]).all() for k in after)


def test_dpo_reference_previous_is_the_policy_the_round_starts_from(tiny_demo, tmp_path, monkeypatch):
    """Round 1 with `--dpo_reference previous`: DPO against round 0's policy, stopped before it trains."""
    calls: list[list[str]] = []
    real_run = rounds_module._run

    def fake_dpo_then_stop(recipe, argv):
        if recipe != "dpo":
            return real_run(recipe, argv)
        calls.append(argv)
        if len(calls) == 2:
            raise Stopped
        # round 0: SFT's weights under the DPO folder (what trains is tested above)
        import shutil

        shutil.copytree(argv[argv.index("--model_name_or_path") + 1], argv[argv.index("--output_dir") + 1])

    monkeypatch.setattr(rounds_module, "_run", fake_dpo_then_stop)
    out = tmp_path / "dpo-previous"
    with pytest.raises(Stopped):
        run_recipe("iterate", _args(tiny_demo, out, rounds=1, method="dpo", dpo_reference="previous"))
    round0 = str(out / "round0/dpo")
    assert calls[1][calls[1].index("--model_name_or_path") + 1] == round0
    assert calls[1][calls[1].index("--ref_model_path") + 1] == round0
