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


def _elsewhere(text: str) -> str:
    return text.replace("| OMP_NUM_THREADS |", "| OMP_NUM_THREADS | 2 |\n| was |")


def test_numbers_are_named_by_table_row_and_column(run_root):
    found = summary.numbers(summary.summarize(run_root))
    assert found["Pipeline summary / ppo / final KL / value"] == 3.6
    assert found["Held-out evaluation / ppo / win_rate_vs_first"] == 0.93
    assert found["Held-out evaluation / sft / rm_score_mean"] == 0.1
    assert not any(key.startswith("Environment") for key in found)


def test_counts_the_configuration_fixes_must_be_equal_elsewhere():
    entry = {"min": 625152.0, "max": 625152.0, "mean": 625152.0, "values": {"a": 625152.0}}
    assert summary.accepted_range(entry, key="Pipeline summary / base / parameters / value") == (625152.0, 625152.0)
    assert summary.accepted_range(entry, key="Pipeline summary / ppo / final KL / value")[0] < 625152.0


def test_the_band_spans_the_runs_and_accepts_its_margin(run_root):
    runs = {"seed1": _with(run_root, "ppo", "objective/kl", 3.0), "seed2": _with(run_root, "ppo", "objective/kl", 4.0),
            "avx2": _with(run_root, "ppo", "objective/kl", 3.5)}
    band = summary.measure_band(runs)
    kl = band["numbers"]["Pipeline summary / ppo / final KL / value"]
    assert (kl["min"], kl["max"], kl["mean"]) == (3.0, 4.0, 3.5) and kl["values"]["avx2"] == 3.5
    assert band["numbers"]["Held-out evaluation / ppo / win_rate_vs_first"]["min"] == 0.93  # the same in every run
    # widened on each side by the band's width, plus 5% of the value and 0.02
    margin = summary.BAND_MARGIN
    pad = margin["width"] * 1.0 + margin["rtol"] * 4.0 + margin["atol"]
    assert summary.accepted_range(kl) == pytest.approx((3.0 - pad, 4.0 + pad))


def test_another_environment_is_checked_against_the_measured_band(run_root):
    band = {"numbers": {"Pipeline summary / ppo / final KL / value": {"min": 3.0, "max": 4.0, "mean": 3.5,
                                                                     "values": {"a": 3.0, "b": 4.0}}}}
    committed = _with(run_root, "ppo", "objective/kl", 3.6)
    for key, value in summary.numbers(committed).items():  # every other number: a band of its committed value
        band["numbers"].setdefault(key, {"min": value, "max": value, "mean": value, "values": {"a": value}})
    inside = _elsewhere(_with(run_root, "ppo", "objective/kl", 5.0))  # above the band, inside its margin
    assert summary.compare(inside, committed, band) == ([], False)
    outside = _elsewhere(_with(run_root, "ppo", "objective/kl", 5.5))
    problems, same = summary.compare(outside, committed, band)
    assert not same and problems == ["Pipeline summary / ppo / final KL / value: 5.5 is outside the measured band "
                                     "3..4 (accepted 1.78..5.22; measured over 2 runs)"]
    _with(run_root, "ppo", "objective/kl", 3.6)
    low = _elsewhere(_with(run_root, "eval", "win_rate_vs_first", 0.8))  # a band of one value: 0.93 +- 5% + 0.02
    assert summary.compare(low, committed, band)[0] == [
        "Held-out evaluation / ppo / win_rate_vs_first: 0.8 is outside the measured band 0.93..0.93 (accepted "
        "0.8635..0.9965; measured over 1 runs)"]
    del band["numbers"]["Pipeline summary / ppo / final KL / value"]
    inside = _elsewhere(_with(run_root, "eval", "win_rate_vs_first", 0.93))
    assert summary.compare(inside, committed, band)[0] == [
        "Pipeline summary / ppo / final KL / value: 3.6 has no measured band (run `make demo-band` to measure it)"]
    assert summary.compare(_elsewhere(committed).replace("| ppo | final KL |", "| ppo | a new row |"), committed,
                           band)[0]  # text cells: exact
    fewer = summary.summarize(run_root).replace("| sft | held-out loss after | 1.3 |\n", "")
    assert summary.compare(fewer, committed)[0] == ["#### Pipeline summary: 5 rows now, 6 committed"]  # + header
    with pytest.raises(ValueError, match="no measured band"):
        summary.compare(inside, committed)


def test_check_in_another_environment_needs_the_band_file(run_root, tmp_path, capsys):
    committed = tmp_path / "demo.md"
    committed.write_text(_elsewhere(summary.summarize(run_root)))
    assert summary.main([str(run_root), "--check", str(committed)]) == 2
    assert f"No measured band at {tmp_path / 'demo-band.json'}" in capsys.readouterr().err
    (tmp_path / "demo-band.json").write_text(json.dumps(summary.measure_band({"x": summary.summarize(run_root)})))
    assert summary.main([str(run_root), "--check", str(committed)]) == 0
    assert "against the band measured in" in capsys.readouterr().out


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
