"""Every accelerate config under accelerate_configs/ loads with accelerate's own loader and says what its name says."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

accelerate_config_args = pytest.importorskip("accelerate.commands.config.config_args")
from accelerate.commands.launch import _validate_launch_command, launch_command_parser  # noqa: E402
from accelerate.utils import DistributedType  # noqa: E402

CONFIG_DIR = Path(__file__).resolve().parents[2] / "accelerate_configs"

# name -> expected (distributed_type, zero_stage, offload_optimizer_device, offload_param_device)
EXPECTED = {
    "single_gpu.yaml": (DistributedType.NO, None, None, None),
    "multi_gpu.yaml": (DistributedType.MULTI_GPU, None, None, None),
    "deepspeed_zero1.yaml": (DistributedType.DEEPSPEED, 1, "none", "none"),
    "deepspeed_zero2.yaml": (DistributedType.DEEPSPEED, 2, "none", "none"),
    "deepspeed_zero3.yaml": (DistributedType.DEEPSPEED, 3, "none", "none"),
    "deepspeed_zero3_offload.yaml": (DistributedType.DEEPSPEED, 3, "cpu", "cpu"),
    "multi_node.yaml": (DistributedType.MULTI_GPU, None, None, None),
}


def _launch_dests() -> set[str]:
    return {action.dest for action in launch_command_parser()._actions}


def test_config_dir_has_exactly_the_expected_yaml_files():
    found = {p.name for p in CONFIG_DIR.glob("*.yaml")}
    assert found == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_and_matches(name):
    path = CONFIG_DIR / name
    assert path.read_text().startswith("# "), "each config starts with a comment saying when to use it"
    cfg = accelerate_config_args.load_config_from_file(str(path))
    dist_type, zero_stage, offload_opt, offload_param = EXPECTED[name]
    assert cfg.distributed_type == dist_type
    assert cfg.compute_environment.value == "LOCAL_MACHINE"
    assert cfg.mixed_precision == "bf16"
    if dist_type == DistributedType.DEEPSPEED:
        ds = cfg.deepspeed_config
        assert ds["zero_stage"] == zero_stage
        assert ds["offload_optimizer_device"] == offload_opt
        assert ds["offload_param_device"] == offload_param
        assert ds["deepspeed_multinode_launcher"] == "standard"
        # accelerate copies deepspeed_config keys onto `accelerate launch` arguments: unknown keys are silently
        # ignored there, so insist that every key is a real launch option.
        assert set(ds) <= _launch_dests(), set(ds) - _launch_dests()
        if zero_stage == 3:
            assert ds["zero3_init_flag"] is True
            assert ds["zero3_save_16bit_model"] is True
    else:
        assert cfg.deepspeed_config == {}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accelerate_launch_accepts_config_and_cli_overrides(name):
    """What `accelerate launch --config_file X [...] script.py` resolves to, without launching anything."""
    parser = launch_command_parser()
    path = str(CONFIG_DIR / name)
    args, _, _ = _validate_launch_command(parser.parse_args(["--config_file", path, "script.py"]))
    expected_procs = {"single_gpu.yaml": 1, "multi_node.yaml": 16}.get(name, 8)
    assert args.num_processes == expected_procs
    assert args.mixed_precision == "bf16"
    assert args.use_deepspeed == (EXPECTED[name][0] == DistributedType.DEEPSPEED)
    assert args.num_machines == (2 if name == "multi_node.yaml" else 1)
    if EXPECTED[name][1] is not None:
        assert args.zero_stage == EXPECTED[name][1]

    overridden, _, _ = _validate_launch_command(
        launch_command_parser().parse_args(
            ["--config_file", path, "--num_processes", "2", "--mixed_precision", "no", "script.py"]
        )
    )
    assert overridden.num_processes == 2
    assert overridden.mixed_precision == "no"


def test_multi_node_config_fields():
    cfg = accelerate_config_args.load_config_from_file(str(CONFIG_DIR / "multi_node.yaml"))
    assert cfg.num_machines == 2
    assert cfg.machine_rank == 0
    assert cfg.main_process_ip
    assert cfg.main_process_port == 29500


def test_slurm_script():
    script = CONFIG_DIR / "slurm" / "launch.slurm"
    text = script.read_text()
    assert text.startswith("#!/bin/bash")
    assert "#SBATCH --nodes=2" in text
    assert "#SBATCH --gres=gpu:8" in text
    assert "accelerate_configs/deepspeed_zero3.yaml" in text
    for flag in ("--num_machines", "--machine_rank", "--main_process_ip", "--main_process_port", "--num_processes"):
        assert flag in text
    assert '"$SLURM_PROCID"' in text and "srun" in text
    # Preemption: a signal before the time limit, a trap that stops the workers with a checkpoint, a requeue, and a
    # run that resumes from the newest good checkpoint by itself.
    assert "#SBATCH --signal=B:USR1@" in text and "#SBATCH --requeue" in text
    assert "trap 'REQUEUE=1; stop_training SIGUSR1' USR1" in text and "trap 'stop_training SIGTERM' TERM" in text
    assert 'pkill -TERM -P' in text and 'scontrol requeue "$SLURM_JOB_ID"' in text
    assert "RESUME=${RESUME-latest}" in text and '--resume_from_checkpoint "$RESUME"' in text
    bash = shutil.which("bash")
    if bash:
        subprocess.run([bash, "-n", str(script)], check=True)
