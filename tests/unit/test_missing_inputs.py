"""Every command, run as a user runs it, stops on an input path that does not exist with exit code 2, one paragraph
naming the path, and no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO
from gpt2_like import save_gpt2_like

# command -> (script or module, arguments); {missing} is a path that does not exist, {model} a tiny causal LM.
CASES = {
    "sft": ("recipes/sft.py", ["--model_name_or_path", "{missing}", "--output_dir", "{out}"]),
    "sft-dataset": ("recipes/sft.py", ["--model_name_or_path", "{model}", "--dataset_name", "{missing}/data.jsonl",
                                       "--output_dir", "{out}"]),
    "reward": ("recipes/reward.py", ["--model_name_or_path", "{missing}", "--output_dir", "{out}"]),
    "ppo": ("recipes/ppo.py", ["--sft_model_path", "{missing}", "--reward_model_path", "{missing}",
                               "--output_dir", "{out}"]),
    "grpo": ("recipes/grpo.py", ["--model_name_or_path", "{missing}", "--reward_model_path", "{missing}",
                                 "--output_dir", "{out}"]),
    "rloo": ("recipes/rloo.py", ["--model_name_or_path", "{missing}", "--reward_model_path", "{missing}",
                                 "--output_dir", "{out}"]),
    "best_of_n": ("recipes/best_of_n.py", ["--policy_path", "{missing}", "--reward_model_path", "{missing}"]),
    "sample": ("recipes/sample.py", ["--model_name_or_path", "{missing}", "--output_file", "{out}/s.jsonl"]),
    "label": ("recipes/label.py", ["--samples_file", "{missing}/samples.jsonl", "--comparisons_file",
                                   "{out}/c.jsonl"]),
    "chat": ("recipes/chat.py", ["--model_name_or_path", "{missing}"]),
    "iterate": ("recipes/iterate.py", ["--demo_dir", "{missing}", "--output_dir", "{out}"]),
    "frontier": ("-m rlhf_recipes.frontier", ["--demo_dir", "{missing}", "--output_dir", "{out}"]),
    "evaluate": ("recipes/evaluate.py", ["--policy_paths", "{missing}", "--output_dir", "{out}"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_missing_input_exits_2_without_a_traceback(case, tmp_path):
    script, argv = CASES[case]
    paths = {"missing": str(tmp_path / "missing"), "out": str(tmp_path / "out"), "model": str(tmp_path / "model")}
    if "{model}" in " ".join(argv):
        save_gpt2_like(tmp_path / "model")
    command = [sys.executable, *script.split()] if script.startswith("-m") else [sys.executable, str(REPO / script)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([*command, *(a.format(**paths) for a in argv)], capture_output=True, text=True,
                            env=env, timeout=180, cwd=REPO, input="")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and paths["missing"] in error_lines[0], result.stderr[-3000:]
