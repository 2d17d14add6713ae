"""Preemption: on SIGTERM or SIGINT, finish the current step, save a complete checkpoint, and exit 143 or 130.

SLURM, Kubernetes and spot instances send SIGTERM some time before they kill a job. Inside `handle_signals()` the
first SIGTERM/SIGINT only sets a flag; the training loop checks it at the end of each step (`stop_agreed`, a
collective under several processes, so that every rank stops after the same step), writes a checkpoint and leaves
through `Preempted` (a `SystemExit` carrying the shell's code for the signal: 143 for SIGTERM, 130 for SIGINT).

* A second signal, more than `DUPLICATE_WINDOW_S` after the first, stops at once (no checkpoint). The window is
  there because launchers forward signals: under `accelerate launch` a Ctrl-C or a SLURM SIGTERM reaches each
  worker twice, directly and forwarded, milliseconds apart.
* Bounded time: if the step and the checkpoint take longer than RLHF_STOP_GRACE_S seconds (default 300) after the
  first signal, the process exits with the same code without the checkpoint (the previous one is intact: saves are
  atomic). Note that `accelerate launch`/torchrun kill their workers 30 s after forwarding a signal to them.

Trainers use `PreemptionCallback` (added by `checkpoints.AtomicCheckpointMixin`, so SFT, the reward model and
PPO all have it). A loop of one's own (sampling, labelling) uses the same pieces:

    with preemption.handle_signals():
        for batch in batches:
            work(batch)
            if preemption.stop_requested():     # or stop_agreed(device) under several processes
                save_progress()
                raise preemption.Preempted("sampling", "rerun the same command to continue")
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

from transformers import TrainerCallback

logger = logging.getLogger(__name__)

EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}  # 128 + signal number, what a shell reports
GRACE_ENV = "RLHF_STOP_GRACE_S"
DEFAULT_GRACE_S = 300.0
DUPLICATE_WINDOW_S = 3.0

_received: int = 0  # the first signal's number, 0 when none
_received_at: float = 0.0
_depth = 0
_previous: dict[int, object] = {}


def exit_code(signum: int | None = None) -> int:
    """The exit code for a stop by `signum` (default: the signal received): 128 + the signal number."""
    signum = signum or _received or signal.SIGTERM
    return EXIT_CODES.get(signum, 128 + int(signum))


def signal_name(signum: int | None = None) -> str:
    return signal.Signals(signum or _received or signal.SIGTERM).name


class Preempted(SystemExit):
    """Leave the process after a preemption checkpoint; the exit code is 143 (SIGTERM) or 130 (SIGINT)."""

    def __init__(self, what: str, resume_hint: str, signum: int | None = None) -> None:
        self.signum = signum or _received or signal.SIGTERM
        self.message = (f"Stopped by {signal_name(self.signum)}: {what}. {resume_hint} "
                        f"(exit code {exit_code(self.signum)})")
        super().__init__(exit_code(self.signum))
        if os.environ.get("RANK", "0") == "0":  # printed here: a SystemExit with a code prints nothing itself
            print(self.message, file=sys.stderr, flush=True)

    def __str__(self) -> str:
        return self.message


def stop_requested() -> bool:
    """Whether this process received SIGTERM/SIGINT inside `handle_signals()` (local; no communication)."""
    return _received != 0


def stop_agreed(device=None) -> bool:
    """Whether any process received a stop signal; a collective when torch.distributed is initialised.

    Every rank must call it at the same point of the loop. The ranks then agree on the signal too (the largest
    number: SIGTERM wins over SIGINT), so they all exit with the same code.
    """
    global _received
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return stop_requested()
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    flag = torch.tensor([_received], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    agreed = int(flag.item())
    if agreed and not _received:
        _received = agreed  # this rank got no signal itself; it stops with the others, and with their code
    return agreed != 0


def _grace_s() -> float:
    try:
        return float(os.environ.get(GRACE_ENV, DEFAULT_GRACE_S))
    except ValueError:
        return DEFAULT_GRACE_S


def _exit_now(signum: int, why: str) -> None:
    print(f"\n{why} Exiting now without a new checkpoint (exit code {exit_code(signum)}); the last complete "
          "checkpoint is intact.", file=sys.stderr, flush=True)
    os._exit(exit_code(signum))


def _handler(signum: int, frame) -> None:
    global _received, _received_at
    now = time.monotonic()
    if _received:
        if now - _received_at > DUPLICATE_WINDOW_S:
            _exit_now(signum, f"Second signal ({signal.Signals(signum).name}).")
        return  # the same signal forwarded by a launcher
    _received, _received_at = signum, now
    grace = _grace_s()
    print(f"\nReceived {signal.Signals(signum).name}: finishing the current step, then saving a checkpoint and "
          f"exiting (at most {grace:.0f} s, {GRACE_ENV}). Send it again to stop at once.", file=sys.stderr,
          flush=True)
    timer = threading.Timer(grace, _exit_now, args=(signum, f"The step and checkpoint took over {grace:.0f} s."))
    timer.daemon = True
    timer.start()


@contextlib.contextmanager
def handle_signals() -> Iterator[None]:
    """Within the block, SIGTERM/SIGINT set the stop flag instead of killing the process; restored on exit.

    Outside it (loading data and models) the signals act as usual: there is nothing to save yet. Nested uses are
    fine; only the outermost installs and restores. In a thread other than the main one it does nothing (Python
    only lets the main thread install handlers).
    """
    global _depth, _received, _received_at
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _depth == 0:
        _received, _received_at = 0, 0.0
        for signum in EXIT_CODES:
            _previous[signum] = signal.signal(signum, _handler)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            for signum, previous in _previous.items():
                signal.signal(signum, previous)
            _previous.clear()


class PreemptionCallback(TrainerCallback):
    """For `transformers.Trainer` loops (and ours in PPO): stop after the step in which a signal arrived.

    At the end of every step the ranks agree (`stop_agreed`); on a stop the step is checkpointed
    (`should_save`), training stops, and `on_train_end` raises `Preempted`, so the recipe does not go on to save a
    final model as if training had finished.
    """

    def __init__(self) -> None:
        self._signals: contextlib.ExitStack | None = None
        self.stopped_at: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._signals = contextlib.ExitStack()
        self._signals.enter_context(handle_signals())

    def on_step_end(self, args, state, control, **kwargs):
        if self._signals is not None and stop_agreed(getattr(args, "device", None)):
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
        return control

    def restore_signals(self) -> None:
        """Put the previous SIGTERM/SIGINT handlers back (idempotent)."""
        if self._signals is not None:
            self._signals.close()
            self._signals = None

    def on_train_end(self, args, state, control, **kwargs):
        self.restore_signals()
        if self.stopped_at is None:
            return
        checkpoint = os.path.join(args.output_dir, f"checkpoint-{self.stopped_at}")
        raise Preempted(f"step {self.stopped_at} finished and saved in {checkpoint}",
                        "To continue, run the same command with --resume_from_checkpoint latest.")
