"""Crash safety shared by every trainer: atomic checkpoints and a stop on non-finite losses.

Checkpoints are written to a staging folder and renamed when complete. A kill during a save leaves at most a
`tmp-checkpoint-*` folder, which `get_last_checkpoint` ignores (it only matches `checkpoint-<step>`), so
`--resume_from_checkpoint latest` always finds a complete checkpoint.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

STAGING_PREFIX = "tmp-"


class NonFiniteError(RuntimeError):
    """A loss, score or KL became NaN/inf; the message names the step and the quantity."""


class AtomicCheckpointMixin:
    """Mix into a `transformers.Trainer` subclass (before it in the bases) to make `_save_checkpoint` atomic."""

    _staging_root: str | None = None
    _push_after_rename: bool = False

    def _get_output_dir(self, trial) -> str:
        if self._staging_root is not None:
            return self._staging_root
        return super()._get_output_dir(trial)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        # With `push_to_hub`, the Trainer uploads output_dir in the background from inside the save. The staging
        # folder (optimizer and RNG state) is in output_dir then, and would go up or vanish mid-upload: wait for
        # the rename.
        if self._staging_root is not None:
            self._push_after_rename = True
            return
        super()._push_from_checkpoint(checkpoint_folder)

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = super()._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging_root = os.path.join(run_dir, f"{STAGING_PREFIX}{name}")
        if self.args.should_save and os.path.isdir(staging_root):
            shutil.rmtree(staging_root)  # left over from a save that was killed
        self.accelerator.wait_for_everyone()
        limit, self.args.save_total_limit = self.args.save_total_limit, None  # rotate after the rename instead
        self._staging_root = staging_root
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_root = None
            self.args.save_total_limit = limit
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            final = Path(run_dir) / name
            if final.exists():
                shutil.rmtree(final)
            os.replace(os.path.join(staging_root, name), final)
            shutil.rmtree(staging_root, ignore_errors=True)
            _rotate(run_dir, limit)
            if self._push_after_rename:
                self._push_after_rename = False
                self._push_from_checkpoint(str(final))
        self.accelerator.wait_for_everyone()


def _rotate(run_dir: str, limit: int | None) -> None:
    if not limit:
        return
    checkpoints = sorted(
        (p for p in Path(run_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    for old in checkpoints[:-limit]:
        shutil.rmtree(old, ignore_errors=True)


class SafeTrainerMixin(AtomicCheckpointMixin):
    """Atomic checkpoints, and a NaN/inf training loss stops the run naming the step (the last checkpoint stays)."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            raise NonFiniteError(
                f"Non-finite training loss ({loss.item()}) at step {self.state.global_step + 1} of "
                f"{self.args.output_dir}. The last complete checkpoint is kept; lower the learning rate, check the "
                "data, or resume from it with --resume_from_checkpoint latest."
            )
        return loss
