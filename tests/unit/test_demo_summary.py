"""The demo's results file: written from a run's metrics, compared with the committed one, copied into the README."""

from __future__ import annotations

import json

import pytest

from rlhf_recipes.demo import summary


@pytest.fixture
def run_root(tmp_path):
    for stage, metrics in {"sft": {"eval_loss_before": 1.6, "eval_loss_after": 1.3},
                           "reward": {"eval_accuracy": 0.88, "reward_bias": -2.5},
                           "ppo": {"objective/kl": 3.6}}.items():
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "stage_metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "eval_results.json").write_text(json.dumps({"results": [
        {"policy": "sft", "rm_score_mean": 0.1, "win_rate_vs_first": 0.5},
        {"policy": "ppo", "rm_score_mean": 1.8, "win_rate_vs_first": 0.93}]}))
    return tmp_path


def _with(run_root, stage, key, value) -> str:
    path = run_root / stage / ("stage_metrics.json" if stage != "eval" else "eval_results.json")
    data = json.loads(path.read_text())
    if stage == "eval":
        data["results"][1][key] = value
    else:
        data[key] = value
    path.write_text(json.dumps(data))
    return summary.summarize(run_root)


def test_summary_records_environment_stages_and_evaluation(run_root, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    text = summary.summarize(run_root)
    assert "| transformers |" in text and "| OMP_NUM_THREADS | 1 |" in text and "logical cores |" in text
    assert "| reward | normalisation bias | -2.5 |" in text
    assert "| ppo | 1.8 |" in text and "eos_fraction" not in text  # only columns some row has


def test_same_environment_must_match_exactly(run_root):
    committed = summary.summarize(run_root)
    assert summary.compare(committed, committed) == ([], True)
    moved = _with(run_root, "eval", "win_rate_vs_first", 0.9297)
    problems, same = summary.compare(moved, committed)
    assert same and problems == ["#### Held-out evaluation (reward model, simulated labeler, KL to SFT) | ppo | 1.8: "
                                 "0.9297 now, 0.93 committed"]


def test_another_environment_gets_the_measured_tolerance(run_root):
    committed = summary.summarize(run_root)
    other = committed.replace("| OMP_NUM_THREADS |", "| OMP_NUM_THREADS | 2 |\n| was |")
    tol = summary.CROSS_ENVIRONMENT_TOLERANCE
    within = 3.6 * (1 + tol["rtol"]) + tol["atol"] * 0.9
    beyond = 3.6 * (1 + tol["rtol"]) + tol["atol"] * 1.1
    near = _with(run_root, "ppo", "objective/kl", within).replace("| OMP_NUM_THREADS |", "| OMP_NUM_THREADS | 2 |\n| was |")
    assert summary.compare(near, committed) == ([], False)
    far = _with(run_root, "ppo", "objective/kl", beyond).replace("| OMP_NUM_THREADS |", "| OMP_NUM_THREADS | 2 |\n| was |")
    problems, same = summary.compare(far, committed)
    assert not same and len(problems) == 1 and "final KL" in problems[0]
    assert summary.compare(other.replace("| ppo | final KL |", "| ppo | a new row |"), committed)[0]  # text: exact
    fewer = summary.summarize(run_root).replace("| sft | held-out loss after | 1.3 |\n", "")
    assert summary.compare(fewer, committed)[0] == ["#### Pipeline summary: 5 rows now, 6 committed"]  # + header


def test_readme_gets_the_file_between_its_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- begin results/demo.md -->\nold table\n<!-- end results/demo.md -->\nafter\n")
    summary.insert_into_readme(readme, "results/demo.md", "| new | table |\n")
    assert readme.read_text() == ("intro\n<!-- begin results/demo.md -->\n| new | table |\n"
                                  "<!-- end results/demo.md -->\nafter\n")
    (tmp_path / "OTHER.md").write_text("no markers\n")
    with pytest.raises(ValueError, match=r"OTHER.md has no `<!-- begin results/demo.md -->`"):
        summary.insert_into_readme(tmp_path / "OTHER.md", "results/demo.md", "x")


def test_readme_block_is_the_heldout_comparison_and_the_check_holds_the_readme_to_it(run_root, tmp_path):
    (run_root / "eval_heldout").mkdir()
    (run_root / "eval_heldout" / "eval_results.json").write_text(json.dumps({"results": [
        {"policy": "sft", "labeler_win_vs_first": 0.5, "kl_to_reference": 0.0},
        {"policy": "ppo", "labeler_win_vs_first": 0.84, "kl_to_reference": 5.9}]}))
    committed = summary.summarize(run_root)
    block = summary.readme_block(committed, "results/demo.md")
    assert block.splitlines()[2:] == ["| policy | labeler win | KL to SFT |", "| --- | --- | --- |",
                                      "| sft | 0.5 | 0 |", "| ppo | 0.84 | 5.9 |"]
    assert "Pipeline summary" not in block and "logical cores" in block  # only the comparison, and where it ran
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- begin results/demo.md -->\nold\n<!-- end results/demo.md -->\n")
    assert summary.check_readme(readme, "results/demo.md", committed) == [
        f"{readme}'s demo block is not the short form of results/demo.md."]
    summary.insert_into_readme(readme, "results/demo.md", block)
    assert summary.check_readme(readme, "results/demo.md", committed) == []
    moved = committed.replace("| ppo | 0.84 |", "| ppo | 0.85 |")
    assert summary.check_readme(readme, "results/demo.md", moved) != []
    with pytest.raises(ValueError, match="no `#### Openings no stage trained on"):
        summary.readme_block(summary.summarize(run_root / "sft"), "results/demo.md")
