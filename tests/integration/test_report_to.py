"""`report_to: [tensorboard, trackio]` for every stage: a short run writes both logs locally, offline, with no
server and no network, and each log holds the metrics the trainer logged (read back with TensorBoard's
EventAccumulator and Trackio's SQLite storage)."""

from __future__ import annotations

import json
import re
import socket
import sys
from pathlib import Path

import pytest
from conftest import REPO, run_recipe
from stage_runs import reward_model_dir, sft_args

pytestmark = pytest.mark.usefixtures("one_torch_thread")
# A metric each stage logs, as it appears in trainer_state.json's log_history.
STAGE_METRIC = {"sft": "loss", "reward": "loss", "ppo": "objective/kl", "grpo": "reward", "rloo": "reward"}


def stage_args(stage: str, demo_dir: Path, sft_dir: Path, rm_dir: Path, out: Path) -> list[str]:
    if stage == "sft":
        return sft_args(demo_dir, out, "--max_steps", "2", "--save_strategy", "no")
    if stage == "reward":
        return ["--config", str(REPO / "recipes/demo/reward.yaml"), "--model_name_or_path", str(sft_dir),
                "--dataset_name", str(demo_dir / "data/reward"), "--normalization_dataset", str(demo_dir / "data/sft"),
                "--normalization_samples", "8", "--max_train_samples", "16", "--max_eval_samples", "8",
                "--per_device_train_batch_size", "4", "--max_steps", "2", "--logging_steps", "1",
                "--save_strategy", "no", "--output_dir", str(out)]
    common = ["--sft_model_path", str(sft_dir), "--model_name_or_path", str(sft_dir), "--reward_model_path",
              str(rm_dir), "--dataset_name", str(demo_dir / "data/prompts"), "--output_dir", str(out),
              "--max_train_samples", "16", "--max_eval_samples", "4", "--save_strategy", "no", "--logging_steps", "1"]
    if stage == "ppo":
        return ["--config", str(REPO / "recipes/demo/ppo.yaml"), *common, "--ptx_dataset",
                str(demo_dir / "data/ptx/train.jsonl"), "--total_episodes", "16", "--per_device_train_batch_size", "4",
                "--num_mini_batches", "2", "--num_ppo_epochs", "1", "--response_length", "8",
                "--local_rollout_forward_batch_size", "8", "--ptx_batch_size", "2", "--num_sample_generations", "0"]
    return ["--config", str(REPO / f"recipes/demo/{stage}.yaml"), *common, "--max_steps", "2",
            "--per_device_train_batch_size", "8", "--num_generations", "4", "--max_completion_length", "8"]


@pytest.fixture(scope="module")
def rm_dir(sft_dir, tmp_path_factory):
    return reward_model_dir(sft_dir, tmp_path_factory.mktemp("report-to-rm"))


@pytest.fixture
def offline_trackio(tmp_path, monkeypatch):
    """Trackio's local storage in a temporary folder, and no IP socket may connect or listen meanwhile."""
    store = tmp_path / "trackio"
    monkeypatch.setenv("TRACKIO_DIR", str(store))  # read when trackio is first imported
    import trackio  # noqa: F401

    for name, module in list(sys.modules.items()):  # ... and already bound if an earlier test imported it
        if name.startswith("trackio") and isinstance(getattr(module, "TRACKIO_DIR", None), Path):
            monkeypatch.setattr(module, "TRACKIO_DIR", store)

    def refuse(self, *args, **kwargs):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"a reporter opened a network socket: {args}")
        return original[kwargs.pop("_op", "connect")](self, *args, **kwargs)

    original = {"connect": socket.socket.connect, "bind": socket.socket.bind}
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "bind", lambda self, *a: refuse(self, *a, _op="bind"))
    return store


@pytest.mark.parametrize("stage", list(STAGE_METRIC))
def test_tensorboard_and_trackio_receive_every_stages_metrics_offline(stage, demo_dir, sft_dir, rm_dir, tmp_path,
                                                                      offline_trackio):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from trackio.sqlite_storage import SQLiteStorage

    out = tmp_path / stage
    args = stage_args(stage, demo_dir, sft_dir, rm_dir, out)
    # Several reporters are a YAML list (a flag takes one): the shipped recipe with `report_to` replaced.
    config = Path(args[args.index("--config") + 1])
    recipe = tmp_path / config.name
    recipe.write_text(re.sub(r"(?m)^report_to: .*$", "report_to: [tensorboard, trackio]", config.read_text()))
    args[args.index("--config") + 1] = str(recipe)
    run_recipe(stage, [*args, "--project", f"test-{stage}", "--run_name", f"run-{stage}"])
    key = STAGE_METRIC[stage]
    logged = [log[key] for log in json.loads((out / "trainer_state.json").read_text())["log_history"] if key in log]
    assert len(logged) >= 2

    # TensorBoard: the event file under output_dir/runs/, every logged value as a scalar (prefix "train/").
    folders = {event.parent for event in (out / "runs").rglob("events.out.tfevents.*")}
    assert len(folders) == 1  # one run folder (its writer may have opened more than one file)
    accumulator = EventAccumulator(str(folders.pop()))
    accumulator.Reload()
    assert [e.value for e in accumulator.Scalars(f"train/{key}")] == pytest.approx(logged, rel=1e-5)

    # Trackio: the project's SQLite file in TRACKIO_DIR (no server, no Space), the same values.
    assert (offline_trackio / f"test-{stage}.db").is_file()
    rows = SQLiteStorage.get_logs(f"test-{stage}", f"run-{stage}")
    assert [r[f"train/{key}"] for r in rows if f"train/{key}" in r] == pytest.approx(logged, rel=1e-5)
