"""A command that does not quantise says nothing about quantisation kernels (or anything else) before its work."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO


def test_recipe_help_prints_usage_and_nothing_else():
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"}
    # ppo imports rlhf_recipes first; sft imports transformers first. Both at once: each is mostly import time.
    runs = {recipe: subprocess.Popen([sys.executable, str(REPO / "recipes" / f"{recipe}.py"), "--help"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for recipe in ("ppo", "sft")}
    for recipe, process in runs.items():
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, f"{recipe}: {err}"
        assert out.startswith("usage:"), recipe
        # bitsandbytes asks the Hub for a CPU 4-bit kernel when it is imported (through transformers -> peft).
        assert err == "", f"recipes/{recipe}.py --help wrote to stderr:\n{err}"
