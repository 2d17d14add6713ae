"""Training curves from a run's ``trainer_state.json``.

``plot_run(run_dir)`` reads the ``log_history`` that ``transformers.Trainer`` (and so TRL's SFT / reward trainers and
our PPO trainer) writes to ``trainer_state.json`` and saves PNGs:

* PPO runs (the log has ``objective/scores`` or ``objective/rlhf_reward``), against ``episode``:
  ``ppo_reward.png`` (``objective/rlhf_reward`` and ``objective/scores``), ``ppo_kl.png``, ``ppo_kl_coef.png``,
  ``ppo_entropy.png``, ``ppo_value_loss.png`` (``loss/value_avg``) and ``ppo_reward_vs_kl.png`` (scatter of
  ``objective/scores`` against ``objective/kl``, coloured by episode: the reward / KL frontier).
* Other runs (SFT, reward model), against ``step``: ``loss.png`` (``loss`` and ``eval_loss``) and ``accuracy.png``
  (``eval_accuracy``, plus training ``accuracy`` when logged).

Keys missing from the log are skipped (no file), never an error.

``run_dir`` may be a finished run's output_dir (``trainer_state.json`` at the top), a ``checkpoint-N`` folder, a
run dir holding only ``checkpoint-*`` folders (the newest, i.e. highest N, is used) or the json file itself.
PNGs go to ``out_dir``, by default the folder that was passed (the json's own folder when a file was passed).

CLI: ``python -m rlhf_recipes.plots RUN_DIR [--out DIR]``
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

TRAINER_STATE_NAME = "trainer_state.json"
PPO_MARKER_KEYS = ("objective/scores", "objective/rlhf_reward")

# (file stem, title, y label, [(log key, legend label), ...]) for PPO runs; x axis is `episode`.
PPO_LINE_PLOTS: list[tuple[str, str, str, list[tuple[str, str]]]] = [
    (
        "ppo_reward",
        "Reward",
        "reward",
        [("objective/rlhf_reward", "rlhf_reward (score - KL penalty)"), ("objective/scores", "scores (reward model)")],
    ),
    ("ppo_kl", "KL(policy || reference)", "KL", [("objective/kl", "objective/kl")]),
    ("ppo_kl_coef", "KL coefficient", "kl_coef", [("objective/kl_coef", "objective/kl_coef")]),
    ("ppo_entropy", "Policy entropy", "entropy", [("objective/entropy", "objective/entropy")]),
    ("ppo_value_loss", "Value loss", "loss", [("loss/value_avg", "loss/value_avg")]),
]

# Same for SFT / reward-model runs; x axis is `step`.
STEP_LINE_PLOTS: list[tuple[str, str, str, list[tuple[str, str]]]] = [
    ("loss", "Loss", "loss", [("loss", "train loss"), ("eval_loss", "eval loss")]),
    ("accuracy", "Accuracy", "accuracy", [("eval_accuracy", "eval accuracy"), ("accuracy", "train accuracy")]),
]

_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def find_trainer_state(run_dir: str | Path) -> Path:
    """Path of the ``trainer_state.json`` to read for ``run_dir`` (see module docstring)."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        return run_dir
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} does not exist")
    top = run_dir / TRAINER_STATE_NAME
    if top.is_file():
        return top
    checkpoints = []
    for child in run_dir.iterdir():
        match = _CHECKPOINT_RE.match(child.name)
        if match and (child / TRAINER_STATE_NAME).is_file():
            checkpoints.append((int(match.group(1)), child))
    if not checkpoints:
        raise FileNotFoundError(f"no {TRAINER_STATE_NAME} in {run_dir} or in any {run_dir}/checkpoint-*/")
    return max(checkpoints)[1] / TRAINER_STATE_NAME


def load_log_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The ``log_history`` list of the run's trainer_state.json."""
    with open(find_trainer_state(run_dir), encoding="utf-8") as f:
        state = json.load(f)
    history = state.get("log_history", [])
    return [entry for entry in history if isinstance(entry, dict)]


def is_ppo_run(log_history: list[dict[str, Any]]) -> bool:
    return any(key in entry for entry in log_history for key in PPO_MARKER_KEYS)


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def series(log_history: Iterable[dict[str, Any]], key: str, x_key: str) -> tuple[list[float], list[float]]:
    """(x, y) for every log entry that has finite numbers under both ``x_key`` and ``key``."""
    xs, ys = [], []
    for entry in log_history:
        x, y = _as_float(entry.get(x_key)), _as_float(entry.get(key))
        if x is not None and y is not None:
            xs.append(x)
            ys.append(y)
    return xs, ys


def _x_key_for(log_history: list[dict[str, Any]], preferred: str) -> str:
    return preferred if any(_as_float(e.get(preferred)) is not None for e in log_history) else "step"


def _new_figure() -> Figure:
    fig = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def _line_plot(
    log_history: list[dict[str, Any]],
    keys: list[tuple[str, str]],
    x_key: str,
    title: str,
    ylabel: str,
    path: Path,
) -> Path | None:
    curves = [(label, *series(log_history, key, x_key)) for key, label in keys]
    curves = [c for c in curves if c[1]]
    if not curves:
        return None
    fig = _new_figure()
    ax = fig.add_subplot()
    for label, xs, ys in curves:
        ax.plot(xs, ys, marker="o" if len(xs) <= 30 else None, markersize=3, linewidth=1.2, label=label)
    ax.set_title(title)
    ax.set_xlabel(x_key)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if len(curves) > 1:
        ax.legend()
    return _save(fig, path)


def _frontier_plot(log_history: list[dict[str, Any]], x_key: str, path: Path) -> Path | None:
    points = []
    for entry in log_history:
        kl, score, t = (_as_float(entry.get(k)) for k in ("objective/kl", "objective/scores", x_key))
        if kl is not None and score is not None and t is not None:
            points.append((kl, score, t))
    if not points:
        return None
    kls, scores, ts = zip(*points)
    fig = _new_figure()
    ax = fig.add_subplot()
    sc = ax.scatter(kls, scores, c=ts, cmap="viridis", s=18)
    fig.colorbar(sc, ax=ax, label=x_key)
    ax.set_title("Reward vs KL")
    ax.set_xlabel("objective/kl")
    ax.set_ylabel("objective/scores")
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def plot_log_history(log_history: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Write the PNGs for ``log_history`` into ``out_dir``; returns the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path | None] = []
    if is_ppo_run(log_history):
        x_key = _x_key_for(log_history, "episode")
        for stem, title, ylabel, keys in PPO_LINE_PLOTS:
            written.append(_line_plot(log_history, keys, x_key, title, ylabel, out_dir / f"{stem}.png"))
        written.append(_frontier_plot(log_history, x_key, out_dir / "ppo_reward_vs_kl.png"))
    else:
        for stem, title, ylabel, keys in STEP_LINE_PLOTS:
            written.append(_line_plot(log_history, keys, "step", title, ylabel, out_dir / f"{stem}.png"))
    return [p for p in written if p is not None]


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Plot the training curves of ``run_dir``; returns the PNG files written (see module docstring)."""
    run_dir = Path(run_dir)
    log_history = load_log_history(run_dir)
    if out_dir is None:
        out_dir = run_dir.parent if run_dir.is_file() else run_dir
    return plot_log_history(log_history, out_dir)


FRONTIER_COLORS = {"ppo": "tab:blue", "best_of_n": "tab:gray", "grpo": "tab:orange", "rloo": "tab:green",
                   "dpo": "tab:red", "online_dpo": "tab:purple", "iterative_dpo": "tab:brown"}
_RUN_STYLES = ["-", "--", ":", "-."]


def plot_frontier(points: list[dict[str, Any]], path: str | Path) -> Path:
    """Gold (labeler win rate vs SFT), diversity (distinct-2) and proxy (RM score) against KL to SFT, one colour per
    method, one line per run (a training run's checkpoints in training order, so a run whose KL falls back draws a
    line that turns back; best-of-n's points in order of n); ``points`` as ``rlhf_recipes.frontier`` writes them."""
    fig = Figure(figsize=(18, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for ax, key, title in zip(axes, ("gold_win_rate", "distinct_2", "proxy_reward"),
                              ("Gold: simulated-labeler win rate vs SFT", "Diversity: distinct-2 of the responses",
                               "Proxy: reward-model score")):
        runs: dict[str, list[dict[str, Any]]] = {}
        for p in points:
            runs.setdefault(p["run"], []).append(p)
        per_method: dict[str, int] = {}
        for run, run_points in runs.items():
            method = run_points[0]["method"]
            style = _RUN_STYLES[per_method.get(method, 0) % len(_RUN_STYLES)]
            per_method[method] = per_method.get(method, 0) + 1
            run_points = sorted(run_points, key=lambda p: (p["episodes"], p["kl"]))
            ax.plot([p["kl"] for p in run_points], [p[key] for p in run_points], style, marker="o", markersize=3,
                    linewidth=1.2, color=FRONTIER_COLORS.get(method), label=run)
        ax.set_title(title)
        ax.set_xlabel("KL(policy || SFT), nats")
        ax.set_ylabel(key)
        ax.grid(True, alpha=0.3)
    axes[2].legend(fontsize=7, loc="best")
    return _save(fig, Path(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rlhf_recipes.plots",
        description="Plot training curves (PNG) from a run's trainer_state.json.",
    )
    parser.add_argument("run_dir", help="output_dir of a run, a checkpoint-N folder, or a trainer_state.json")
    parser.add_argument("--out", default=None, help="folder for the PNGs (default: RUN_DIR)")
    args = parser.parse_args(argv)
    written = plot_run(args.run_dir, args.out)
    for path in written:
        print(path)
    if not written:
        print(f"nothing to plot: no known metrics in {find_trainer_state(args.run_dir)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
