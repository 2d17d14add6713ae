"""`make frontier` end to end on the test demo (tiny budgets), and its summary arithmetic on hand-made points."""

from __future__ import annotations

import json
import math

import pytest
from conftest import REPO
from stage_runs import reward_model_dir

from rlhf_recipes.config import ConfigError
from rlhf_recipes.frontier import FrontierArguments, run_frontier, summary_lines, time_to

pytestmark = pytest.mark.usefixtures("one_torch_thread")
KEYS = {"method", "run", "kl", "proxy_reward", "gold_win_rate", "gold_score", "vader_win_rate", "afinn_win_rate",
        "distinct_2", "mean_words", "episodes", "wall_s"}


def judged_texts(monkeypatch) -> list[tuple[list[str], list[str], dict]]:
    """(prompts, texts, point) of every point the frontier judges, with the texts it judged."""
    from rlhf_recipes.frontier import Judge

    seen, point = [], Judge.point

    def recording(self, row, texts, **extra):
        result = point(self, row, texts, **extra)
        seen.append((list(self.prompts), list(texts), result))
        return result

    monkeypatch.setattr(Judge, "point", recording)
    return seen


def share_of_wins(scores: list[float], baseline: list[float]) -> float:
    return sum(1.0 if s > b else 0.5 if s == b else 0.0 for s, b in zip(scores, baseline)) / len(scores)


def test_frontier_trains_every_method_and_evaluates_all_points_alike(demo_dir, sft_dir, tmp_path, monkeypatch):
    from rlhf_recipes.demo.judges import judge_scores
    from rlhf_recipes.demo.labeler import labeler_breakdown

    seen = judged_texts(monkeypatch)
    demo = tmp_path / "demo"
    demo.mkdir()
    rm = reward_model_dir(sft_dir, tmp_path)  # the session's random-head reward model
    for name, target in (("sft", sft_dir), ("reward", rm), ("data", demo_dir / "data")):
        (demo / name).symlink_to(target)
    args = FrontierArguments(demo_dir=str(demo), recipes_dir=str(REPO / "recipes"), num_prompts=4, episodes=64,
                             checkpoints=1, best_of_n=[1, 2], grpo_betas=[0.1], rloo_betas=[0.1], batch_size=4,
                             dpo_betas=[0.1], online_dpo_betas=[0.1], dpo_max_rankings=32)
    points = run_frontier(args)
    seen = list(seen)  # what the first run judged (the merging runs below judge more)

    out = demo / "frontier"
    assert json.loads((out / "frontier.json").read_text()) == points
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "- ppo (demo recipe): final KL" in (out / "frontier.md").read_text()
    assert {p["method"] for p in points} == {"ppo", "best_of_n", "grpo", "rloo", "dpo", "online_dpo"}
    for p in points:
        assert KEYS <= set(p) and all(math.isfinite(p[k]) for k in KEYS - {"method", "run"})

    sft_points = [p for p in points if p["episodes"] == 0]
    trained = [p for p in points if p["method"] != "best_of_n" and p["episodes"] > 0]
    bon = {p["n"]: p for p in points if p["method"] == "best_of_n"}
    assert len(sft_points) == 5 and len(trained) == 5  # one run per method, one checkpoint each
    # Best-of-1 is the SFT policy's own sample (same prompts, same seed) as the baseline every point is judged by.
    for p in [bon[1], *sft_points]:
        assert p["kl"] == 0 and p["gold_win_rate"] == p["vader_win_rate"] == p["afinn_win_rate"] == 0.5
        assert p["gold_score"] == pytest.approx(bon[1]["gold_score"]) and p["mean_words"] == bon[1]["mean_words"]
    assert bon[2]["kl"] == pytest.approx(math.log(2) - 0.5) and bon[2]["episodes"] == 8
    for p in trained:  # every sampling run spent the same budget, DPO its 32 rankings; all moved away from SFT
        assert p["episodes"] == (32 * 3 if p["method"] == "dpo" else 64)  # best_vs_rest: 3 pairs per ranking of 4
        assert p["kl"] != 0 and p["wall_s"] > 0 and p["seed"] == 42

    # A second run of one method keeps the other methods' points of the first (same SFT point) ...
    again = run_frontier(FrontierArguments(**{**vars(args), "methods": ["dpo"], "output_dir": str(tmp_path / "again"),
                                              "merge_results": str(out / "frontier.json")}))
    assert [p for p in again if p["method"] != "dpo"] == [p for p in points if p["method"] != "dpo"]
    assert len([p for p in again if p["method"] == "dpo"]) == 2
    # ... and refuses points measured against another SFT policy.
    other = [{**p, "gold_score": p["gold_score"] + 0.1} for p in points]
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(ConfigError, match="another SFT policy"):
        run_frontier(FrontierArguments(**{**vars(args), "methods": ["dpo"], "output_dir": str(tmp_path / "x"),
                                          "merge_results": str(tmp_path / "other.json")}))

    # Every judged number, recomputed from the texts the point was judged on against SFT's texts (the point judged
    # at episode 0), by the labeler and the judges directly.
    (prompts, sft_texts, _), *_ = [entry for entry in seen if entry[2].get("episodes") == 0]
    sft_gold = [labeler_breakdown(p, t)["total"] for p, t in zip(prompts, sft_texts)]
    recomputed = []
    for point_prompts, texts, p in seen:
        assert point_prompts == prompts and len(texts) == 4
        gold = [labeler_breakdown(q, t)["total"] for q, t in zip(prompts, texts)]
        assert p["gold_score"] == pytest.approx(sum(gold) / len(gold))
        wins = {"gold": share_of_wins(gold, sft_gold),
                **{name: share_of_wins(judge_scores(name, texts), judge_scores(name, sft_texts))
                   for name in ("vader", "afinn")}}
        assert {name: p[f"{name}_win_rate"] for name in wins} == wins
        recomputed += wins.values()
    assert len(seen) == len(points) and set(recomputed) != {0.5}, "some point must differ from SFT to be checked"


def test_time_to_threshold_and_summary_compare_ppo_with_grpo_at_equal_kl():
    def point(run, method, episodes, kl, win, score, wall):
        return {"run": run, "method": method, "episodes": episodes, "kl": kl, "gold_win_rate": win,
                "gold_score": score, "distinct_2": 0.5, "mean_words": 9.0, "wall_s": wall, "proxy_reward": 1.0}

    points = [point("ppo", "ppo", 0, 0.0, 0.5, 0.4, 0.0), point("ppo", "ppo", 1024, 2.0, 0.8, 0.80, 20.0),
              point("ppo", "ppo", 2048, 3.0, 0.9, 0.86, 40.0),
              point("grpo b", "grpo", 1024, 2.5, 0.7, 0.70, 10.0), point("grpo b", "grpo", 2048, 5.0, 0.85, 0.84, 19.0),
              point("grpo c", "grpo", 2048, 2.9, 0.95, 0.9, 30.0)]
    assert time_to(points, "ppo", "gold_score", 0.85) == 40.0
    assert time_to(points, "ppo", "gold_win_rate", 0.8) == 20.0
    assert time_to(points, "grpo b", "gold_score", 0.85) is None
    points += [{**point("best_of_n", "best_of_n", 64 * n, kl, 0.5, score, n), "n": n}
               for n, kl, score in ((1, 0.0, 0.4), (2, 0.19, 0.86), (4, 0.64, 0.9))]
    lines = summary_lines(points)
    assert "- best-of-n first reaches labeler score 0.85 at n = 2 (KL 0.19, win rate 0.500, 2 s)" in lines
    assert any(line.startswith("- grpo b:") and "to labeler score 0.85: never" in line for line in lines)
    # Only GRPO/RLOO points at KL >= PPO's final 3.0 compete: "grpo c" (KL 2.9) does not.
    assert lines[-1] == ("- ppo at its final KL 3.00: win rate 0.900; the best GRPO/RLOO point at equal or higher KL: "
                         "grpo b at 2048 episodes, KL 5.00, win rate 0.850")
    far = [p for p in points if p["method"] != "grpo" or p["kl"] < 3.0]  # no GRPO/RLOO point reaches PPO's KL
    assert summary_lines(far)[-1] == "- ppo at its final KL 3.00: win rate 0.900; no GRPO/RLOO point reaches that KL"
    # Several seeds: each run's final points are averaged over its seeds.
    seeded = [{**p, "run": p["run"] + f" seed={seed}", "seed": seed} for seed in (1, 2) for p in points
              if p["method"] == "ppo"]
    seeded[-1] = {**seeded[-1], "kl": 5.0, "gold_score": 0.5, "gold_win_rate": 0.6}
    assert "- ppo, mean of 2 seeds at the end: KL 4.00, labeler score 0.680, win rate 0.750" in summary_lines(seeded)


def test_each_method_runs_its_demo_recipes_budget_unless_one_is_given(tmp_path):
    """The frontier's PPO is the demo's PPO: without --episodes each run takes its recipe's own budget, read as the
    recipe parses it (a YAML edited to another budget moves the frontier with it)."""
    import shutil

    import yaml

    from rlhf_recipes.frontier import recipe_episodes

    recipes = tmp_path / "recipes"
    shutil.copytree(REPO / "recipes", recipes)
    ppo_yaml = recipes / "demo/ppo.yaml"
    ppo = yaml.safe_load(ppo_yaml.read_text())
    assert recipe_episodes(recipes, "ppo") == ppo["total_episodes"]
    ppo_yaml.write_text(ppo_yaml.read_text().replace(f"total_episodes: {ppo['total_episodes']}",
                                                     "total_episodes: 640"))
    assert recipe_episodes(recipes, "ppo") == 640
    for method, completions_per_step in (("grpo", 32), ("rloo", 32), ("online_dpo", 16 * 2)):
        config = yaml.safe_load((recipes / f"demo/{method}.yaml").read_text())
        assert recipe_episodes(recipes, method) == config["max_steps"] * completions_per_step
