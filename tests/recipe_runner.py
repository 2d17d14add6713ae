"""Run a recipe in a subprocess, optionally killing itself with SIGKILL in the middle of a checkpoint save.

    python tests/recipe_runner.py [--kill-during-save STEP] [--signal-during-step STEP[:RANK[:SIGNAL]]] \
        [--record-steps FILE] <recipe> <recipe args...>

With `--kill-during-save STEP` the process dies after the weights of checkpoint STEP are written but before its
optimizer state is: the half-written checkpoint a power cut or an OOM kill would leave. With
`--signal-during-step STEP` the process sends itself SIGTERM (or SIGNAL) as step STEP begins, on every rank or only
on RANK: a scheduler's preemption notice arriving mid-step, at a step the test knows. With `--record-steps FILE`
every optimizer step this process runs appends its number to FILE: a resumed run must not redo the steps before its
checkpoint. The run goes through the recipe's `run_main`, as on the command line (exit codes included).
"""

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def signal_during_step(spec: str) -> None:
    from transformers.trainer_callback import CallbackHandler

    step, rank, name = (spec.split(":") + [None, None])[:3]
    signum = getattr(signal, name or "SIGTERM")
    original = CallbackHandler.on_step_begin

    def on_step_begin(self, args, state, control):
        if state.global_step + 1 == int(step) and rank in (None, "", os.environ.get("RANK", "0")):
            os.kill(os.getpid(), signum)
        return original(self, args, state, control)

    CallbackHandler.on_step_begin = on_step_begin


def record_steps(sink) -> None:
    """Append the number of every training step this process finishes to `sink` (a list, or a file path)."""
    from transformers.trainer_callback import CallbackHandler

    original = CallbackHandler.on_step_end

    def on_step_end(self, args, state, control):
        if isinstance(sink, list):
            sink.append(state.global_step)
        else:
            with open(sink, "a") as handle:
                handle.write(f"{state.global_step}\n")
        return original(self, args, state, control)

    CallbackHandler.on_step_end = on_step_end


def main() -> None:
    args = sys.argv[1:]
    kill_step = None
    if args[0] == "--kill-during-save":
        kill_step, args = int(args[1]), args[2:]
    if args[0] == "--signal-during-step":
        signal_during_step(args[1])
        args = args[2:]
    if args[0] == "--record-steps":
        record_steps(args[1])
        args = args[2:]
    if kill_step is not None:
        from transformers import Trainer

        original = Trainer._save_optimizer_and_scheduler

        def save_then_die(self, output_dir):
            if self.state.global_step == kill_step:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, output_dir)

        Trainer._save_optimizer_and_scheduler = save_then_die
    from conftest import load_recipe

    from rlhf_recipes.config import run_main

    module = load_recipe(args[0])
    run_main(module.main, module.DATACLASSES, args[1:])


if __name__ == "__main__":
    main()
