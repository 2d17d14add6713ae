"""The benchmark harness's case list, commands, summaries and report, on fake measurements (no timing, no models)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


harness = _load("harness")


def fake_rank(steps=(2.0, 1.0, 1.0), tokens=(100, 200, 200), rss=1000.0, **extra):
    return {"step_times": list(steps), "tokens": list(tokens), "padded_tokens": [t + 10 for t in tokens],
            "params": 124_000_000, "trainable": 1_000_000, "peak_rss_mib": rss, **extra}


def test_case_names_are_unique_and_tiers_nest():
    names = [c.name for c in harness.CASES]
    assert len(names) == len(set(names))
    quick, default, full = (harness.select_cases(t) for t in ("quick", "default", "full"))
    assert set(c.name for c in quick) < set(c.name for c in default) < set(c.name for c in full)
    assert {"ppo-124m-full-1proc", "ppo-124m-lora-1proc"} <= {c.name for c in default}
    # every stage x method in one process on the demo model is in the quick set
    assert {f"{s}-tiny-{m}-1proc" for s in harness.STAGES for m in harness.METHOD_FLAGS} <= {c.name for c in quick}


def test_select_by_glob_and_unknown_pattern():
    chosen = harness.select_cases(patterns=["ppo-124m-*"])
    assert chosen and all(c.name.startswith("ppo-124m-") for c in chosen)
    with pytest.raises(ValueError, match="No case matches"):
        harness.select_cases(patterns=["nope-*"])


def test_recipe_args_batch_arithmetic_and_flags():
    paths = {"policy": "P", "reward": "R", "data": "D"}
    ppo = harness.Case("ppo", "124m", "qlora", "zero2")
    args = harness.recipe_args(ppo, paths, "OUT", world_size=2)
    flags = dict(zip(args[::2], args[1::2]))
    work = harness.PROFILES["cpu"]["124m"]["ppo"]
    assert int(flags["--per_device_train_batch_size"]) * work["mini_batches"] * 2 == work["batch"]
    assert int(flags["--total_episodes"]) == work["batch"] * work["steps"]
    assert flags["--load_in_4bit"] == "true" and flags["--use_peft"] == "true"
    assert flags["--ddp_backend"] == "gloo"  # CPU, two processes
    sft = harness.recipe_args(harness.Case("sft", "tiny"), paths, "OUT", work={"steps": 3})
    sft_flags = dict(zip(sft[::2], sft[1::2]))
    assert sft_flags["--max_steps"] == "3" and "--ddp_backend" not in sft_flags
    assert "--use_peft" not in sft_flags


def test_user_command_names_the_recipe_and_launcher():
    case = harness.Case("rm", "tiny", "full", "zero3")
    command = harness.user_command(case, ["--a", "1", "--a", "2"], 2)
    assert command.startswith("accelerate launch --config_file accelerate_configs/deepspeed_zero3.yaml "
                              "--num_processes 2 --mixed_precision no recipes/reward.py")
    assert command.endswith("--a 2")  # repeated flags collapse to the value the parser uses
    assert harness.user_command(harness.Case("sft", "tiny"), [], 1).startswith("python recipes/sft.py")


def test_summarise_sft_two_ranks_leaves_out_warmup():
    case = harness.Case("sft", "tiny", "full", "ddp")
    row = harness.summarise(case, [fake_rank(rss=900.0), fake_rank(steps=(2.0, 1.5, 1.5), rss=1100.0)], wall_s=30.0)
    assert row.status == "ok" and row.procs == 2 and row.unit == "tokens/s"
    assert row.measured_steps == 2
    assert row.throughput == pytest.approx((400 + 400) / 3.0)  # both ranks' tokens / the slower rank's time
    assert row.peak_rss_mib == 1100.0 and row.total_rss_mib == 2000.0
    assert row.trainable_m == pytest.approx(1.0)


def test_summarise_ppo_phases_and_episodes():
    phases = {"generate_s": [9.0, 1.0, 1.2], "score_s": [3.0, 0.5, 0.5], "optimise_s": [9.0, 2.0, 2.0],
              "experience_s": [12.0, 1.6, 1.8]}
    case = harness.Case("ppo", "124m", "lora")
    row = harness.summarise(case, [fake_rank(steps=(20.0, 4.0, 4.0), episodes_per_update=8, phases=phases)])
    assert row.unit == "episodes/s" and row.throughput == pytest.approx(16 / 8.0)
    assert row.generate_s == pytest.approx(1.1) and row.optimise_s == pytest.approx(2.0)
    assert row.update_s == pytest.approx(4.0)
    table = harness.ppo_table([row])
    assert "| ppo-124m-lora-1proc | 2.00 | 4.00 | 1.10 | 0.50 | 2.00 | 0.40 |" in table


def test_summarise_without_results_is_a_failure():
    assert harness.summarise(harness.Case("sft", "tiny"), []).status == "failed"


def test_findings_ratio_of_lora_to_full_ppo_memory():
    full = harness.Row(case="ppo-124m-full-1proc", stage="ppo", size="124m", method="full", launch="1proc", procs=1,
                       peak_rss_mib=6000.0)
    lora = harness.Row(case="ppo-124m-lora-1proc", stage="ppo", size="124m", method="lora", launch="1proc", procs=1,
                       peak_rss_mib=2400.0)
    (line,) = harness.findings([full, lora])
    assert "= 0.40 (meets the <= 0.6 target)" in line
    lora.peak_rss_mib = 4800.0
    assert "misses" in harness.findings([full, lora])[0]
    # on a GPU the comparison is torch's peak allocation, whatever the host RSS did
    full.peak_gpu_mib, lora.peak_gpu_mib = 7000.0, 2100.0
    (line,) = harness.findings([full, lora])
    assert line.startswith("PPO peak GPU memory") and "= 0.30 (meets" in line


def test_markdown_table_escapes_pipes_and_formats_numbers():
    table = harness.markdown_table(["a", "b"], [["x|y", harness.fmt(1234.5)], [harness.fmt(None), harness.fmt(0.5)]])
    lines = table.splitlines()
    assert lines[0] == "| a | b |" and lines[1] == "| --- | --- |"
    assert lines[2] == "| x\\|y | 1,234 |" and lines[3] == "|  | 0.5 |"
    assert harness.fmt(float("nan")) == "nan"


def test_machine_label_is_hostname_independent():
    assert harness.machine_label(2, "Linux", "x86_64") == "cpu-2core"
    assert harness.machine_label(8, "Darwin", "arm64") == "cpu-8core-darwin-arm64"
    assert harness.machine_label(gpu="NVIDIA H100 80GB HBM3 x1") == "gpu-nvidia-h100-80gb-hbm3-x1"


def test_report_has_tables_commands_and_skips():
    ok = harness.summarise(harness.Case("sft", "tiny"), [fake_rank()], wall_s=12.0, command="python recipes/sft.py x")
    skipped = harness.Row(case="ppo-124m-qlora-1proc", stage="ppo", size="124m", method="qlora", launch="1proc",
                          procs=1, status="skipped", note="time budget 14 min")
    text = harness.report([ok, skipped], machine="cpu-2core", environment={"torch": "2.13.0"},
                          invocation="python benchmarks/run.py", settings={"profile": "cpu"}, notes=["a note"],
                          date="2026-01-01")
    assert text.startswith("# Benchmark results: cpu-2core")
    assert "| sft-tiny-full-1proc | sft | tiny | full | 1proc | 1 |" in text
    assert "skipped (time budget 14 min)" in text
    assert "# sft-tiny-full-1proc\npython recipes/sft.py x" in text
    assert "* a note" in text and '"profile": "cpu"' in text


def test_overhead_and_trl_comparison_tables():
    bare_trl = _load("bare_trl")
    runs = {"ours": [{"tokens_per_s": 95.0, "tokens_per_step": 300.0, "process_s": 20.0, "peak_rss_mib": 600.0}],
            "bare": [{"tokens_per_s": 100.0, "tokens_per_step": 300.0, "process_s": 18.0, "peak_rss_mib": 590.0}]}
    summary = bare_trl.summarise("sft", runs)
    assert summary["overhead_pct"] == pytest.approx(100 / 95 * 100 - 100)
    assert "+5.3%" in bare_trl.overhead_table([summary]) and summary["cpu_overhead_pct"] is None

    baseline = _load("trl_ppo_baseline")
    settings = baseline.shared_settings(batch=8, updates=3, response_length=16, epochs=1, mini_batches=2)
    assert settings["per_device_train_batch_size"] * settings["num_mini_batches"] == 8
    assert settings["total_episodes"] == 24
    argv = baseline.ours_argv("P", "R", "D", "O", settings)
    assert argv[argv.index("--max_grad_norm") + 1] == "0" and argv[argv.index("--bf16") + 1] == "false"
    steady = baseline.steady({"step_times": [10.0, 4.0, 4.0], "generate_s": [5.0, 1.0, 1.0],
                              "episodes_per_update": 8, "peak_rss_mib": 1.0, "process_s": 2.0})
    assert steady["episodes_per_s"] == pytest.approx(2.0) and steady["generate_s"] == pytest.approx(1.0)
    table = baseline.comparison_table({"ours": steady, "trl": steady})
    assert table.splitlines()[2].startswith("| ours | 2.000 |  | 4.00 | 1.00 |")


def test_merge_rows_replaces_measured_cases_and_keeps_run_order():
    def row(case, status="ok", throughput=1.0):
        stage, size, method, launch = case.split("-")
        return harness.Row(case=case, stage=stage, size=size, method=method, launch=launch, procs=1, status=status,
                           throughput=throughput)

    previous = [harness.row_to_json(row("sft-tiny-full-1proc", throughput=1.0)),
                harness.row_to_json(row("ppo-124m-lora-1proc", status="skipped"))]
    merged = harness.merge_rows(previous, [row("ppo-124m-lora-1proc", throughput=2.0),
                                           row("sft-tiny-full-1proc", status="skipped")])
    assert [r.case for r in merged] == ["ppo-124m-lora-1proc", "sft-tiny-full-1proc"]  # registry order
    assert merged[0].throughput == 2.0 and merged[0].status == "ok"
    assert merged[1].throughput == 1.0 and merged[1].status == "ok"  # a skip does not erase a measurement
