"""`accelerate launch` as the Makefile runs it: the same arguments and processes, but a failed run ends with its
own exit code and message only.

    python -m rlhf_recipes.launch --config_file accelerate_configs/single_gpu.yaml --num_processes 1 \
        recipes/sft.py --config recipes/demo/sft.yaml

`accelerate launch` reports a failed child by raising: `CalledProcessError` (one process) with the child's stderr
printed again as a `RuntimeError`, or torch's `ChildFailedError` (several processes), and it exits 1. A recipe's
user error (`run_main`: one paragraph, exit code 2) would be printed twice, under a traceback, with the code lost.
Here the child has already said what went wrong on its stderr, so the launcher adds nothing and exits with the
child's code (a signal's as 128 + its number). `--debug` (accelerate's flag) keeps accelerate's own report.
"""

from __future__ import annotations

import subprocess
import sys


def _child_exit_code(error: BaseException) -> int | None:
    """The exit code of the failed child process that `error` reports, or None if it reports no child."""
    if isinstance(error, subprocess.CalledProcessError):
        code = error.returncode
    else:
        failures = getattr(error, "failures", None)  # torch.distributed.elastic's ChildFailedError
        if not isinstance(failures, dict) or not failures:
            return None
        # The first rank to fail is the cause; the others are usually stopped because of it.
        first = min(failures.values(), key=lambda failure: getattr(failure, "timestamp", 0))
        code = getattr(first, "exitcode", None)
        if code is None:
            return None
    return 128 - code if code < 0 else code  # a negative code is a signal (-15: SIGTERM -> 143)


def main(argv: list[str] | None = None) -> int:
    from accelerate.commands.launch import launch_command, launch_command_parser

    args = launch_command_parser().parse_args(argv)
    try:
        launch_command(args)
    except Exception as error:  # noqa: BLE001 - only a child's failure is handled; anything else is re-raised
        code = _child_exit_code(error)
        if code is None or getattr(args, "debug", False):
            raise
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
