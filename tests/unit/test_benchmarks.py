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
    assert "| ppo-124m-lora-1proc | 2.00 |  | 4.00 | 1.10 | 0.50 | 2.00 | 0.40 |" in table
    timed = fake_rank(steps=(20.0, 4.0, 4.0), episodes_per_update=8, phases=phases, step_cpu_times=[9.0, 2.0, 2.0])
    assert harness.summarise(case, [timed]).extra["episodes_per_cpu_s"] == pytest.approx(16 / 4.0)


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


def test_flop_counts_on_hand_computed_numbers():
    # 1 layer, d=2, V=10: per token 24*1*2^2 = 96 (weights) + 4*1*2*seq (attention); 2*2*10 = 40 per logit position
    assert harness.forward_flops(1, 2, 10, batch=1, seq=3, logit_positions=2) == 3 * (96 + 24) + 2 * 40
    assert harness.forward_flops(1, 2, 10, batch=2, seq=3, logit_positions=0) == 2 * 3 * (96 + 24)
    # prefill of 3 tokens with one logit (400), then decode at context 4 (96 + 32 + 40) and 5 (96 + 40 + 40)
    assert harness.generate_flops(1, 2, 10, batch=1, prompt=3, steps=3) == 400 + 168 + 176
    model, shape = {"layers": 1, "width": 2, "vocab": 10}, {"batch": 1, "prompt": 2, "response": 1}
    logits, plain = harness.forward_flops(1, 2, 10, 1, 3, 2), harness.forward_flops(1, 2, 10, 1, 3, 0)
    fp32 = harness.phase_flops("ppo", model, shape, "full", "fp32", epochs=2)
    assert fp32["score"] == logits + 2 * plain  # reference (logits), value, reward
    assert fp32["optimise"] == 2 * 3 * (logits + plain)  # 2 epochs x (forward + backward) of policy and value
    bf16 = harness.phase_flops("ppo", model, shape, "lora", "bf16", epochs=1)
    assert bf16["score"] == 2 * logits + 2 * plain  # + the policy's forward for the rollout log-probs
    assert bf16["optimise"] == 2 * (logits + plain)  # LoRA: no weight gradients of the base
    grpo = harness.phase_flops("grpo", model, shape, "full", "bf16", epochs=1)
    assert grpo["score"] == logits + plain and grpo["optimise"] == 3 * logits


def test_summarise_rl_phases_mfu_and_invariants():
    phases = {"generate_s": [9.0, 2.0], "score_s": [3.0, 1.0], "optimise_s": [9.0, 4.0]}
    shapes = [{"batch": 8, "prompt": 10, "response": 32, "response_tokens": 200}] * 2
    model = {"layers": 12, "width": 768, "vocab": 50258}
    rank = fake_rank(steps=(30.0, 8.0), tokens=(0, 0), episodes_per_update=8, phases=phases, shapes=shapes,
                     model=model, epochs=1, mixed_precision="bf16", invariants=[{"kl": 1e-4, "ratio": 1.0}, {"kl": -3e-4, "ratio": 0.9995}])
    case = harness.Case("ppo", "124m", "full", precision="bf16")
    row = harness.summarise(case, [rank], peaks={"bf16": 1e12, "fp32": 1e11}, precision="fp32")
    # the precision the run reports wins over the one it was asked for
    assert row.precision == "bf16" and case.name == "ppo-124m-full-1proc-bf16"
    assert row.phase_tokens_per_s["generate"] == pytest.approx(200 / 2.0)
    assert row.phase_tokens_per_s["optimise"] == pytest.approx(8 * 42 / 4.0)
    flops = harness.phase_flops("ppo", model, shapes[0], "full", "bf16", 1)
    assert row.phase_mfu["score"] == pytest.approx(flops["score"] / 1.0 / 1e12)  # the bf16 peak, not fp32's
    assert row.kl_max == pytest.approx(3e-4) and row.ratio_dev_max == pytest.approx(5e-4)
    table = harness.phase_table([row])
    assert "| ppo-124m-full-1proc-bf16 | 100 |" in table and "3.0e-04 | 5.0e-04 |" in table
    # GRPO's optimise time is what its step spent outside the rollout
    grpo = fake_rank(steps=(30.0, 8.0), tokens=(0, 0), episodes_per_update=8, shapes=shapes, model=model, epochs=1,
                     phases={"generate_s": [9.0, 2.0], "score_s": [3.0, 1.0]})
    row = harness.summarise(harness.Case("grpo", "124m"), [grpo], peaks={"fp32": 1e11})
    assert row.optimise_s == pytest.approx(5.0) and row.kl_max is None


def test_cases_pair_fp32_with_bf16_and_grpo_runs_trl_at_the_ppo_shapes():
    names = {c.name for c in harness.select_cases("default")}
    for method in ("full", "lora"):
        assert {f"ppo-124m-{method}-1proc", f"ppo-124m-{method}-1proc-bf16"} <= names
    assert {"grpo-124m-full-1proc", "grpo-124m-full-1proc-bf16"} <= names
    paths = {"policy": "P", "reward": "R", "data": "D"}
    ppo = dict(zip(*[iter(harness.recipe_args(harness.Case("ppo", "124m"), paths, "OUT", bf16=True))] * 2))
    assert ppo["--learning_rate"] == "0" and ppo["--bf16"] == "true"
    grpo = dict(zip(*[iter(harness.recipe_args(harness.Case("grpo", "124m"), paths, "OUT"))] * 2))
    work = harness.PROFILES["cpu"]["124m"]
    assert grpo["--batch"] == str(work["ppo"]["batch"]) == str(work["grpo"]["batch"])
    assert grpo["--response_length"] == str(work["ppo"]["response_length"]) == "32"
    assert grpo["--prompts_file"] == "D/prompts_train/train.jsonl"


def test_median_row_of_alternating_repeats():
    def row(throughput, status="ok"):
        return harness.Row(case="c", stage="ppo", size="124m", method="full", launch="1proc", procs=1,
                           status=status, throughput=throughput, unit="episodes/s")

    chosen = harness.median_row([row(0.9), row(0.5), row(None, "failed"), row(0.7)])
    assert chosen.throughput == 0.7 and "median of 3 alternating runs: 0.90, 0.50, 0.70" in chosen.note
    assert harness.median_row([row(0.5), row(0.9)]).throughput == 0.5  # the lower middle: conservative
    failed = row(None, "failed")
    assert harness.median_row([failed]) is failed


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


def test_sweep_points_override_one_work_key_each():
    base = harness.Case("ppo", "124m", precision="bf16")
    cases = harness.sweep_cases([base], ["response_length=16,64", "batch=4"])
    assert [c.name for c in cases] == ["ppo-124m-full-1proc-bf16@response_length=16",
                                       "ppo-124m-full-1proc-bf16@response_length=64", "ppo-124m-full-1proc-bf16@batch=4"]
    flags = dict(zip(*[iter(harness.recipe_args(cases[1], {"policy": "P", "reward": "R", "data": "D"}, "O"))] * 2))
    assert flags["--response_length"] == "64" and flags["--per_device_train_batch_size"] == "8"
    with pytest.raises(ValueError, match="key=v1,v2"):
        harness.sweep_cases([base], ["batch"])
    backend = harness.sweep_cases([base], ["generation_backend=static"])[0]
    flags = dict(zip(*[iter(harness.recipe_args(backend, {"policy": "P", "reward": "R", "data": "D"}, "O"))] * 2))
    assert flags["--generation_backend"] == "static" and backend.name.endswith("@generation_backend=static")
