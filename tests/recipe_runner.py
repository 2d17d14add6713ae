"""Run a recipe in a subprocess, optionally killing itself with SIGKILL in the middle of a checkpoint save.

    python tests/recipe_runner.py [--kill-during-save STEP] <recipe> <recipe args...>

With `--kill-during-save STEP` the process dies after the weights of checkpoint STEP are written but before its
optimizer state is: the half-written checkpoint a power cut or an OOM kill would leave.
"""

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    args = sys.argv[1:]
    kill_step = None
    if args[0] == "--kill-during-save":
        kill_step, args = int(args[1]), args[2:]
    if kill_step is not None:
        from transformers import Trainer

        original = Trainer._save_optimizer_and_scheduler

        def save_then_die(self, output_dir):
            if self.state.global_step == kill_step:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, output_dir)

        Trainer._save_optimizer_and_scheduler = save_then_die
    from conftest import run_recipe

    run_recipe(args[0], args[1:])


if __name__ == "__main__":
    main()
