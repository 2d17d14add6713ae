from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from rlhf_recipes.plots import find_trainer_state, main, plot_run  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    data = path.read_bytes()
    return data.startswith(PNG_SIGNATURE) and len(data) > 5_000


def _write_state(folder: Path, log_history: list[dict], global_step: int | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        "global_step": global_step or max((e.get("step", 0) for e in log_history), default=0),
        "epoch": 1.0,
        "log_history": log_history,
        "max_steps": 100,
    }
    path = folder / "trainer_state.json"
    path.write_text(json.dumps(state))
    return path


def _ppo_history(n: int = 12, with_kl_coef: bool = True) -> list[dict]:
    history = []
    for i in range(1, n + 1):
        kl = 0.5 * i
        entry = {
            "step": i,
            "epoch": i / n,
            "episode": 64 * i,
            "objective/kl": kl,
            "objective/entropy": 3.0 - 0.1 * i,
            "objective/non_score_reward": -0.05 * kl,
            "objective/rlhf_reward": 0.2 * i - 0.05 * kl,
            "objective/scores": 0.2 * i + 0.1 * math.sin(i),
            "loss/policy_avg": -0.01 * i,
            "loss/value_avg": 1.0 / i,
            "lr": 1e-6,
        }
        if with_kl_coef:
            entry["objective/kl_coef"] = 0.05 * (1 + 0.01 * i)
        history.append(entry)
    history.append({"step": n, "epoch": 1.0, "train_runtime": 12.3, "train_samples_per_second": 5.2})
    return history


def _sft_history(with_accuracy: bool = False) -> list[dict]:
    history = []
    for step in range(5, 55, 5):
        history.append({"step": step, "epoch": step / 50, "loss": 3.0 / (1 + 0.1 * step), "learning_rate": 2e-5})
        if step % 20 == 0:
            entry = {"step": step, "epoch": step / 50, "eval_loss": 3.2 / (1 + 0.1 * step), "eval_runtime": 1.0}
            if with_accuracy:
                entry["eval_accuracy"] = 0.5 + step / 200
            history.append(entry)
    history.append({"step": 50, "epoch": 1.0, "train_loss": 1.1, "train_runtime": 30.0})
    return history


def drawn_figures(monkeypatch) -> dict:
    """File name -> the Figure saved under it, to read back what each plot drew."""
    import rlhf_recipes.plots as plots

    figures, save = {}, plots._save

    def keep(fig, path):
        figures[Path(path).name] = fig
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def lines_of(fig) -> dict[str, tuple[list[float], list[float]]]:
    """Legend label -> (x, y) of every line on the figure's first axes."""
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in fig.axes[0].get_lines()}


def expected(history: list[dict], key: str, x_key: str) -> tuple[list[float], list[float]]:
    """The (x, y) points a plot of `key` must draw, read straight from the log."""
    rows = [e for e in history if key in e and x_key in e and math.isfinite(e[key])]
    return [float(e[x_key]) for e in rows], [float(e[key]) for e in rows]


def test_ppo_run(tmp_path, monkeypatch):
    run = tmp_path / "ppo_run"
    history = _ppo_history()
    _write_state(run, history)
    figures = drawn_figures(monkeypatch)
    written = plot_run(run)
    names = sorted(p.name for p in written)
    assert names == sorted(
        [
            "ppo_reward.png",
            "ppo_kl.png",
            "ppo_kl_coef.png",
            "ppo_entropy.png",
            "ppo_value_loss.png",
            "ppo_reward_vs_kl.png",
        ]
    )
    for path in written:
        assert path.parent == run
        assert _is_png(path), path
    # Each plot draws its own series, against the episode.
    ep = "episode"
    assert lines_of(figures["ppo_reward.png"]) == {
        "rlhf_reward (score - KL penalty)": expected(history, "objective/rlhf_reward", ep),
        "scores (reward model)": expected(history, "objective/scores", ep)}
    for name, key in (("ppo_kl.png", "objective/kl"), ("ppo_kl_coef.png", "objective/kl_coef"),
                      ("ppo_entropy.png", "objective/entropy"), ("ppo_value_loss.png", "loss/value_avg")):
        assert list(lines_of(figures[name]).values()) == [expected(history, key, ep)], name
        assert len(expected(history, key, ep)[0]) == 12
    (scatter,) = figures["ppo_reward_vs_kl.png"].axes[0].collections
    kls, scores = expected(history, "objective/kl", ep)[1], expected(history, "objective/scores", ep)[1]
    assert scatter.get_offsets().tolist() == [[k, s] for k, s in zip(kls, scores)]
    assert scatter.get_array().tolist() == expected(history, "objective/kl", ep)[0]  # coloured by episode


def test_ppo_run_missing_keys_are_skipped(tmp_path):
    history = _ppo_history(with_kl_coef=False)
    for entry in history:
        entry.pop("loss/value_avg", None)
        entry.pop("objective/rlhf_reward", None)  # reward plot still has objective/scores
    run = tmp_path / "ppo_partial"
    _write_state(run, history)
    names = {p.name for p in plot_run(run)}
    assert names == {"ppo_reward.png", "ppo_kl.png", "ppo_entropy.png", "ppo_reward_vs_kl.png"}


def test_ppo_run_without_episode_falls_back_to_step(tmp_path, monkeypatch):
    history = _ppo_history(n=4)
    for entry in history:
        entry.pop("episode", None)
    run = tmp_path / "ppo_noepisode"
    _write_state(run, history)
    figures = drawn_figures(monkeypatch)
    assert "ppo_reward_vs_kl.png" in {p.name for p in plot_run(run)}
    assert list(lines_of(figures["ppo_kl.png"]).values()) == [expected(history[:4], "objective/kl", "step")]
    assert figures["ppo_kl.png"].axes[0].get_xlabel() == "step"


def test_sft_run(tmp_path, monkeypatch):
    run = tmp_path / "sft_run"
    history = _sft_history()
    _write_state(run, history)
    figures = drawn_figures(monkeypatch)
    written = plot_run(run)
    assert [p.name for p in written] == ["loss.png"]  # no accuracy logged -> no accuracy.png
    assert _is_png(written[0])
    assert lines_of(figures["loss.png"]) == {"train loss": expected(history, "loss", "step"),
                                             "eval loss": expected(history, "eval_loss", "step")}
    assert [len(xs) for xs, _ in lines_of(figures["loss.png"]).values()] == [10, 2]


def test_reward_run_with_accuracy_and_out_dir(tmp_path, monkeypatch):
    run = tmp_path / "rm_run"
    history = _sft_history(with_accuracy=True)
    _write_state(run, history)
    out = tmp_path / "plots" / "rm"
    figures = drawn_figures(monkeypatch)
    written = plot_run(run, out_dir=out)
    assert lines_of(figures["accuracy.png"]) == {"eval accuracy": expected(history, "eval_accuracy", "step")}
    assert sorted(p.name for p in written) == ["accuracy.png", "loss.png"]
    assert all(p.parent == out and _is_png(p) for p in written)
    assert not list(run.glob("*.png"))


def test_checkpoint_layout_uses_newest_checkpoint(tmp_path):
    run = tmp_path / "ckpt_run"
    _write_state(run / "checkpoint-20", _sft_history()[:3])
    newest = _write_state(run / "checkpoint-100", _sft_history())
    _write_state(run / "checkpoint-9", _sft_history()[:1])  # 9 < 100 numerically, > "100" as a string
    (run / "checkpoint-200").mkdir()  # no trainer_state.json: ignored
    assert find_trainer_state(run) == newest
    written = plot_run(run)
    assert [p.name for p in written] == ["loss.png"]
    assert written[0].parent == run and _is_png(written[0])


def test_checkpoint_folder_directly_and_json_file(tmp_path):
    ckpt = tmp_path / "run" / "checkpoint-5"
    state = _write_state(ckpt, _ppo_history(n=3))
    assert {p.parent for p in plot_run(ckpt)} == {ckpt}
    assert find_trainer_state(state) == state
    assert {p.parent for p in plot_run(state, tmp_path / "o")} == {tmp_path / "o"}


def test_nothing_to_plot_and_missing_run(tmp_path):
    run = tmp_path / "empty"
    _write_state(run, [{"step": 1, "train_runtime": 1.0}, {"step": 2, "loss": float("nan")}])
    assert plot_run(run) == []
    with pytest.raises(FileNotFoundError):
        plot_run(tmp_path / "does_not_exist")
    (tmp_path / "no_state").mkdir()
    with pytest.raises(FileNotFoundError):
        plot_run(tmp_path / "no_state")


def test_cli(tmp_path, capsys):
    run = tmp_path / "cli_run"
    _write_state(run, _sft_history(with_accuracy=True))
    assert main([str(run), "--out", str(tmp_path / "cli_out")]) == 0
    printed = capsys.readouterr().out.split()
    assert sorted(Path(p).name for p in printed) == ["accuracy.png", "loss.png"]
    assert all(_is_png(Path(p)) for p in printed)
